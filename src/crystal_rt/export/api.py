"""``export_checkpoint``: checkpoint file -> validated core ONNX (what ``crystal-rt export`` runs)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .._lazy import require
from ..models.maskrcnn import load_checkpoint
from ..spec import PreprocessSpec, default_class_names
from .onnx_export import ExportResult, export_core_onnx

#: class names a preset implies for a model with that many classes (CHiMP: 1 = drop, 2 = crystal)
PRESET_CLASS_NAMES: dict[tuple[str, int], list[str]] = {("chimp", 3): ["__background__", "drop", "crystal"]}
#: the architecture a preset's checkpoints have (CHiMP: torchvision's maskrcnn_resnet50_fpn)
PRESET_ARCH: dict[str, str] = {"chimp": "maskrcnn_resnet50_fpn"}
#: the score threshold a preset's own software applies (CHiMP keeps detections with score >= 0.6)
PRESET_SCORE_THRESHOLD: dict[str, float] = {"chimp": 0.6}


def choose_recipe(
    stored: PreprocessSpec,
    *,
    preset: str | None = None,
    clahe: bool | None = None,
    clip_limit: float | None = None,
    tile_grid: tuple[int, int] | None = None,
    input_size: int | tuple[int, int] | None = None,
    training_bit_depth: int | None = None,
) -> PreprocessSpec:
    """The recipe an export writes: the checkpoint's (or ``preset``'s), with parts overridden."""
    base = stored if preset is None else PreprocessSpec.preset(preset)
    return base.with_overrides(
        clahe=clahe,
        clip_limit=clip_limit,
        tile_grid=tile_grid,
        input_size=input_size,
        training_bit_depth=training_bit_depth,
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    max_detections: int | None = None,
    preprocess: PreprocessSpec | None = None,
    preset: str | None = None,
    clahe: bool | None = None,
    clip_limit: float | None = None,
    tile_grid: tuple[int, int] | None = None,
    validate: bool = True,
    score_threshold: float | None = None,
    training_bit_depth: int | None = None,
) -> ExportResult:
    """Load ``checkpoint`` (ours, or a torchvision state_dict with ``arch``) and export it.

    The recipe is ``preprocess`` when given, else the checkpoint's (the paper recipe for a plain
    state_dict) or ``preset``'s (``paper``, ``chimp``), with ``clahe``/``clip_limit``/``tile_grid``/
    ``input_size``/``training_bit_depth`` (8 or 16: the bit depth of the training images) overriding
    its parts. ``--preset chimp`` implies ``maskrcnn_resnet50_fpn`` for a
    plain state_dict, names the classes of a 3-class model ``drop`` and ``crystal`` and stores
    CHiMP's score threshold 0.6, unless they are given.
    """
    require("torchvision", "Exporting a model")

    loaded = load_checkpoint(
        checkpoint,
        arch=arch or PRESET_ARCH.get(preset or ""),
        num_classes=num_classes,
        class_names=class_names,
        preprocess=preprocess,
        max_detections=max_detections,
        score_threshold=PRESET_SCORE_THRESHOLD.get(preset or "")
        if score_threshold is None
        else score_threshold,
    )
    recipe = choose_recipe(
        loaded.preprocess,
        preset=None if preprocess is not None else preset,
        clahe=clahe,
        clip_limit=clip_limit,
        tile_grid=tile_grid,
        input_size=input_size,
        training_bit_depth=training_bit_depth,
    )
    spec = loaded.model_spec
    names = PRESET_CLASS_NAMES.get((preset or "", spec.num_classes))
    if names and spec.class_names == default_class_names(spec.num_classes):  # none given or stored
        spec = dataclasses.replace(spec, class_names=tuple(names))
    loaded = dataclasses.replace(loaded, preprocess=recipe, model_spec=spec)
    return export_core_onnx(loaded, Path(output), max_detections=max_detections, validate=validate)
