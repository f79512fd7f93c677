"""The CrystalRtError family: every user-facing failure is one of these.

Each error carries a one-sentence message and, where there is one, the path of the file it is
about, so that the CLI, the HTTP service and the hot-folder watcher can report it without a
traceback and carry on.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "BuildError",
    "CalibrationError",
    "CrystalRtError",
    "CudaError",
    "EngineIncompatible",
    "EngineNotFound",
    "ExportError",
    "ImageTooLarge",
    "InferenceError",
    "InvalidDataset",
    "InvalidImage",
    "InvalidModel",
    "InvalidOption",
    "InvalidSpec",
    "KernelBuildError",
    "LintError",
    "MissingDependency",
    "OutputBusy",
    "OutputNotWritten",
    "ParityError",
    "ServiceError",
    "TrainingError",
    "ValidationFailed",
]


class CrystalRtError(Exception):
    """Base class: a problem with the user's input, environment or artifacts."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class MissingDependency(CrystalRtError):
    """An optional dependency (an install extra) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str, hint: str = "") -> None:
        self.package = package
        self.extra = extra
        install = f'"crystal-rt[{extra}]"' if extra else package  # no extra: a base dependency
        super().__init__(f"{purpose} needs {package}, which is not installed: pip install {install}{hint}")


class InvalidImage(CrystalRtError):
    """An image file or array that cannot be used (missing, empty, corrupt, too large, ...)."""


class ImageTooLarge(InvalidImage):
    """An image over the pixel or memory limits (the service answers it with HTTP 413)."""


class InvalidModel(CrystalRtError):
    """A checkpoint or ONNX model that cannot be read or does not follow the contract."""


class InvalidSpec(CrystalRtError):
    """A PreprocessSpec or ModelSpec with a value out of range."""


class InvalidOption(CrystalRtError):
    """A command or API option that cannot be used: an output that is a file, a folder inside
    the folder it is made from, a value out of range, an API call on a closed object, ..."""


class OutputBusy(CrystalRtError):
    """Another process holds the output folder (e.g. a second ``crystal-rt watch`` on it)."""


class OutputNotWritten(CrystalRtError):
    """A result, table or artifact could not be written (disk full, permissions, a vanished share)."""


class ExportError(CrystalRtError):
    """Export to the core ONNX failed."""


class LintError(ExportError):
    """The exported graph uses an operator or attribute TensorRT's ONNX parser cannot import."""


class ParityError(CrystalRtError):
    """Two implementations disagree beyond the parity tolerances: the exported ONNX against PyTorch
    (export's validation) or two engines (``crystal-rt compare``). ``report`` is the
    :class:`~crystal_rt.evaluate.parity.ParityReport` behind it, when one was computed."""

    def __init__(
        self, message: str, *, report: Any | None = None, path: str | os.PathLike[str] | None = None
    ) -> None:
        self.report = report
        super().__init__(message, path=path)


#: The name export's validation failure had before it became :class:`ParityError` (same class).
ValidationFailed = ParityError


class EngineNotFound(CrystalRtError):
    """No engine (manifest + model file) at the given location."""


class EngineIncompatible(CrystalRtError):
    """An engine that was built for another backend, version or machine."""


class BackendUnavailable(CrystalRtError):
    """The requested backend cannot run on this machine."""


class InferenceError(CrystalRtError):
    """A backend failed while running a model it had loaded (ONNX Runtime, TensorRT)."""


class BuildError(CrystalRtError):
    """Building an engine failed: TensorRT could not build the graph, or built an empty plan."""


class TrainingError(CrystalRtError):
    """Training cannot go on (the loss diverged, nothing to resume from)."""


class AccessDenied(CrystalRtError):
    """The HTTP service refused a request before it reached the model: no or a wrong bearer token
    (401), a Host header not this service's (400), a cross-origin browser request (403)."""


class ServiceError(CrystalRtError):
    """The HTTP service failed on its side (a 5xx), or answered with an error the client cannot map."""


class InvalidDataset(CrystalRtError):
    """An annotation file (COCO, Labelme, mask folder) that is malformed; the message names the field."""


class CalibrationError(CrystalRtError):
    """Calibration cannot run (too few usable images) or its graph loses too much accuracy."""


class KernelBuildError(CrystalRtError):
    """NVRTC could not compile a kernel; ``log`` holds the compiler output."""

    def __init__(self, message: str, log: str = "") -> None:
        self.log = log
        super().__init__(f"{message}\n{log.rstrip()}" if log.strip() else message)


class CudaError(CrystalRtError):
    """A CUDA driver call failed (out of memory, bad launch, ...); ``code`` is the CUresult's name."""

    def __init__(self, message: str, *, code: str = "", path: str | os.PathLike[str] | None = None) -> None:
        self.code = code
        super().__init__(message, path=path)
