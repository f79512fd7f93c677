"""TensorRT engines: build (``build.py``, on the shared builder in ``builder.py``) and run (``backend.py``).

Nothing here imports ``tensorrt`` at module import time: every TensorRT module is imported inside
the functions that need it (:func:`crystal_rt.runtime.tensorrt.modules.load_tensorrt`). The builder
functions take the TensorRT module as a parameter, so the same code drives TensorRT (``tensorrt``)
and TensorRT for RTX (``tensorrt_rtx``, whose builder runs without a GPU and builds ahead of time).

Verified without a GPU: option parsing, precision routing, manifests, the engine cache, real
ahead-of-time builds with TensorRT-RTX, and the build and run code against the simulated GPU's
TensorRT (``crystal_rt.testing``). Not verified here (needs an NVIDIA GPU + TensorRT): real
TensorRT builds and plans. ``crystal-rt doctor --gpu`` checks those on a GPU machine.
"""

from __future__ import annotations

from .modules import load_tensorrt, tensorrt_installed
from .options import BuildOptions

__all__ = ["BuildOptions", "load_tensorrt", "tensorrt_installed"]
