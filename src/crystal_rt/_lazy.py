"""Import optional dependencies with one clear error naming the install extra."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import MissingDependency

__all__ = ["LazyModule", "lazy_import", "missing_dependency", "require"]

_EXTRA_FOR = {
    "torch": "export",
    "torchvision": "export",
    "onnx": "export",
    "onnxruntime": "cpu",
    "tensorrt": "gpu",
    "cuda": "gpu",
    "fastapi": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "multipart": "serve",
    "modelopt": "calibrate-trt",
    "pytriton": "triton",
    "tritonclient": "triton",
}

#: the pip package of an import name, where they differ
_PACKAGE_FOR = {
    "cuda": "cuda-python",
    "python_multipart": "python-multipart",
    "multipart": "python-multipart",
    "modelopt": "nvidia-modelopt",
    "pytriton": "nvidia-pytriton",
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


def missing_dependency(exc: ImportError, purpose: str) -> MissingDependency | None:
    """The MissingDependency an ImportError of an optional package stands for (None: another
    ImportError, e.g. a broken install of a base dependency, which stays a traceback)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".", maxsplit=1)[0]
    if top not in _EXTRA_FOR:
        return None
    return MissingDependency(_PACKAGE_FOR.get(top, top), _EXTRA_FOR[top], purpose, _HINT_FOR.get(top, ""))


class LazyModule(ModuleType):
    """A module imported on first attribute access (as Polygraphy's ``mod.lazy_import``).

    Declared at module top, so a module's dependencies are read where they are declared, while
    ``import crystal_rt`` and ``crystal-rt --help`` stay free of torch, ONNX Runtime and OpenCV.
    A missing package fails on first use as :func:`require` does, naming the install extra.
    """

    def __init__(self, name: str, purpose: str, *, package: str | None = None, extra: str | None = None):
        super().__init__(name)
        self._crt_purpose = purpose
        self._crt_package = package
        self._crt_extra = extra
        self._crt_module: ModuleType | None = None

    def _crt_load(self) -> ModuleType:
        if self._crt_module is None:
            self._crt_module = require(
                self.__name__, self._crt_purpose, package=self._crt_package, extra=self._crt_extra
            )
        return self._crt_module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_crt_"):
            raise AttributeError(attr)
        return getattr(self._crt_load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._crt_load())

    def __repr__(self) -> str:
        state = "loaded" if self._crt_module is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(
    module: str, purpose: str = "", *, package: str | None = None, extra: str | None = None
) -> Any:
    """``module``, imported when first used; ``purpose`` names what needs it in the error."""
    return LazyModule(module, purpose or f"This part of crystal-rt ({module})", package=package, extra=extra)
