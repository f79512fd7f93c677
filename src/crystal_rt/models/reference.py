"""The PyTorch reference: a Detector whose engine is the core module itself, run eagerly
(``crystal-rt compare``, export validation, training's evaluation). Needs torch and torchvision."""

from __future__ import annotations

import os
from typing import Any

from ..runtime.detector import Detector
from ..spec import ModelSpec, PreprocessSpec
from .core import CoreMaskRCNN
from .maskrcnn import load_checkpoint
from .torch_backend import TorchBackend

__all__ = ["detector_from_checkpoint", "torch_detector"]


def torch_detector(
    core: CoreMaskRCNN, model: ModelSpec, preprocess: PreprocessSpec, *, score_threshold: float | None = None
) -> Detector:
    """A Detector running ``core`` in PyTorch with the same pipeline as every engine."""
    return Detector(TorchBackend(core), model, preprocess, score_threshold=score_threshold)


def detector_from_checkpoint(
    path: str | os.PathLike[str], *, score_threshold: float | None = None, **overrides: Any
) -> Detector:
    """The checkpoint's core model as a Detector (``overrides`` as ``load_checkpoint`` takes them)."""

    loaded = load_checkpoint(path, **overrides)
    core = CoreMaskRCNN.for_recipe(loaded.model, loaded.preprocess, loaded.model_spec.max_detections)
    return torch_detector(core, loaded.model_spec, loaded.preprocess, score_threshold=score_threshold)
