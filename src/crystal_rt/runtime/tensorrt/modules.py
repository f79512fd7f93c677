"""Find and import the TensorRT Python modules (``tensorrt``, ``tensorrt_rtx``) with one clear error.

``tensorrt-stubs`` (for mypy) installs a ``tensorrt/`` folder holding only ``__init__.pyi``: Python
then imports ``tensorrt`` as an empty namespace package. :func:`tensorrt_installed` and
:func:`load_tensorrt` therefore look for a real module (one with a file and a ``Builder``), never
only for the name.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from ..._lazy import require
from ...cuda.binding import override
from ...errors import MissingDependency

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt_rtx"
MODULES = (TENSORRT, TENSORRT_RTX)
_PACKAGE = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt-rtx-cu13"}


def tensorrt_installed(module: str = TENSORRT) -> bool:
    """Whether a real ``module`` is importable (not a stubs-only namespace package); imports nothing.
    True while a simulated GPU stands in for it (:func:`crystal_rt.testing.simulated_gpu`)."""

    if override(module) is not None:
        return True
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def load_tensorrt(purpose: str, module: str = TENSORRT) -> ModuleType:
    """Import ``module`` (``tensorrt`` or ``tensorrt_rtx``), or raise MissingDependency naming the extra."""
    if module not in MODULES:
        raise ValueError(f"unknown TensorRT module {module!r}; choose one of {', '.join(MODULES)}")

    stand_in = override(module)
    if stand_in is not None:
        return stand_in
    mod = require(module, purpose, package=_PACKAGE[module], extra="gpu")
    if not hasattr(mod, "Builder"):  # the stubs' namespace package
        raise MissingDependency(_PACKAGE[module], "gpu", purpose, " plus NVIDIA TensorRT for this GPU")
    return mod


def module_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))
