"""``export_checkpoint``: checkpoint file -> validated core ONNX (what ``crystal-rt export`` runs)."""

from __future__ import annotations

import os
from pathlib import Path

from .._lazy import require
from ..spec import PreprocessSpec
from .onnx_export import ExportResult, export_core_onnx


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    input_size: int | None = None,
    max_detections: int | None = None,
    preprocess: PreprocessSpec | None = None,
    validate: bool = True,
    score_threshold: float | None = None,
) -> ExportResult:
    """Load ``checkpoint`` (ours, or a torchvision state_dict with ``arch``) and export it."""
    require("torchvision", "Exporting a model")
    from .models import load_checkpoint

    loaded = load_checkpoint(
        checkpoint,
        arch=arch,
        num_classes=num_classes,
        class_names=class_names,
        preprocess=preprocess,
        max_detections=max_detections,
        score_threshold=score_threshold,
    )
    return export_core_onnx(
        loaded, Path(output), input_size=input_size, max_detections=max_detections, validate=validate
    )
