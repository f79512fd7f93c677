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


_HINT_FOR = {
    "tensorrt": " plus NVIDIA TensorRT for this GPU (JetPack on Jetson, or pip install tensorrt)",
}


def require(module: str, purpose: str, *, package: str | None = None, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependency saying which extra provides it."""
    top = module.split(".", maxsplit=1)[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            package or top, extra or _EXTRA_FOR.get(top, "dev"), purpose, _HINT_FOR.get(top, "")
        ) from exc
