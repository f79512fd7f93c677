"""crystal-rt: low-latency Mask R-CNN crystal segmentation next to the microscope.

The public API is imported lazily, so ``import crystal_rt`` stays cheap and works with only the
base install::

    from crystal_rt import Detector
    det = Detector.load("engines/crystals")
    result = det.detect("drop.jpg")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AccessDenied,
    BackendUnavailable,
    BuildError,
    CalibrationError,
    CrystalRtError,
    CudaError,
    EngineIncompatible,
    EngineNotFound,
    ExportError,
    ImageTooLarge,
    InferenceError,
    InvalidDataset,
    InvalidImage,
    InvalidModel,
    InvalidOption,
    InvalidSpec,
    KernelBuildError,
    LintError,
    MissingDependency,
    OutputBusy,
    OutputNotWritten,
    ParityError,
    ServiceError,
    TrainingError,
    ValidationFailed,
)
from .spec import ModelSpec, PreprocessSpec

if TYPE_CHECKING:
    from .build.engine import build_engine
    from .io.decode import DecodedImage, read_image, read_image_info
    from .results.detection import DetectionResult, Instance
    from .runtime.detector import Detector

_LAZY = {
    "Detector": ("crystal_rt.runtime.detector", "Detector"),
    "DetectionResult": ("crystal_rt.results.detection", "DetectionResult"),
    "Instance": ("crystal_rt.results.detection", "Instance"),
    "build_engine": ("crystal_rt.build.engine", "build_engine"),
    "read_image": ("crystal_rt.io.decode", "read_image"),
    "read_image_info": ("crystal_rt.io.decode", "read_image_info"),
    "DecodedImage": ("crystal_rt.io.decode", "DecodedImage"),
}

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "BuildError",
    "CalibrationError",
    "CrystalRtError",
    "CudaError",
    "DecodedImage",
    "DetectionResult",
    "Detector",
    "EngineIncompatible",
    "EngineNotFound",
    "ExportError",
    "ImageTooLarge",
    "InferenceError",
    "Instance",
    "InvalidDataset",
    "InvalidImage",
    "InvalidModel",
    "InvalidOption",
    "InvalidSpec",
    "KernelBuildError",
    "LintError",
    "MissingDependency",
    "ModelSpec",
    "OutputBusy",
    "OutputNotWritten",
    "ParityError",
    "PreprocessSpec",
    "ServiceError",
    "TrainingError",
    "ValidationFailed",
    "__version__",
    "build_engine",
    "read_image",
    "read_image_info",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crystal_rt' has no attribute {name!r}")
