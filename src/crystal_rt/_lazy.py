"""Import optional dependencies with one clear error naming the install extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependency

_EXTRA_FOR = {
    "torch": "export",
    "torchvision": "export",
    "onnx": "export",
    "onnxruntime": "cpu",
    "tensorrt": "gpu",
}


def require(module: str, purpose: str, *, package: str | None = None, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependency saying which extra provides it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(package or top, extra or _EXTRA_FOR.get(top, "dev"), purpose) from exc
