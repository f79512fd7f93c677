"""The one place crystal-rt gets its GPU API modules: cuda-python's driver, TensorRT, and ONNX Runtime
for its GPU execution providers.

Every GPU call in crystal-rt goes through :func:`driver` (``cuda.bindings.driver``), TensorRT's
loader (``runtime/tensorrt/modules.py``, via :func:`override`) or :func:`onnxruntime_gpu`, so that
:func:`crystal_rt.testing.simulated_gpu` can put a stand-in behind them for the length of a ``with``
block (process-wide: the service's worker threads see it too) while the host code itself runs
unchanged. Nothing is imported at module load.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .._lazy import require
from ..errors import InvalidOption

_LOCK = threading.Lock()
_OVERRIDES: dict[str, ModuleType] = {}

DRIVER = "cuda.bindings.driver"
TENSORRT = "tensorrt"
ONNXRUNTIME_GPU = "onnxruntime"  # only for the GPU execution providers; the CPU backend imports it itself


def driver(purpose: str = "Running the CUDA kernels") -> ModuleType:
    """``cuda.bindings.driver`` (or its stand-in), or MissingDependency naming the gpu extra."""
    module = _OVERRIDES.get(DRIVER)
    if module is not None:
        return module
    return require(DRIVER, purpose, package="cuda-python", extra="gpu")


def driver_if_installed() -> ModuleType | None:
    """``cuda.bindings.driver`` (or its stand-in), None where cuda-python is not installed."""
    module = _OVERRIDES.get(DRIVER)
    if module is not None:
        return module
    try:
        return importlib.import_module(DRIVER)
    except ImportError:
        return None


def onnxruntime_gpu(purpose: str = "Running an ONNX Runtime GPU engine") -> ModuleType:
    """``onnxruntime`` (onnxruntime-gpu's) for the CUDA and TensorRT providers, or its stand-in."""
    module = _OVERRIDES.get(ONNXRUNTIME_GPU)
    if module is not None:
        return module
    return require("onnxruntime", purpose, package="onnxruntime-gpu", extra="gpu-cu13")


def override(name: str) -> ModuleType | None:
    """The stand-in for ``name`` (``"cuda.bindings.driver"`` or ``"tensorrt"``) in force, if any."""
    return _OVERRIDES.get(name)


@contextmanager
def overridden(modules: dict[str, ModuleType]) -> Iterator[None]:
    """Use ``modules`` (by real module name) instead of the real ones inside the block; not nestable."""
    unknown = set(modules) - {DRIVER, TENSORRT, ONNXRUNTIME_GPU}
    if unknown:
        raise ValueError(f"cannot stand in for {', '.join(sorted(unknown))}")
    with _LOCK:
        if _OVERRIDES:
            raise InvalidOption("a simulated GPU is already in use in this process")
        _OVERRIDES.update(modules)
    try:
        yield
    finally:
        with _LOCK:
            _OVERRIDES.clear()
