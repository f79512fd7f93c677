"""TensorRT engines at run time: the plan's backend (``backend.py``), its compatibility check against
this machine (``compat.py``), the GPU facts (``device.py``), the plugins and the logger. Building
plans is ``crystal_rt.build.tensorrt``.

Nothing here imports ``tensorrt`` at module import time: every TensorRT module is imported inside
the functions that need it (:func:`crystal_rt.runtime.tensorrt.modules.load_tensorrt`).

Verified without a GPU: the run code against the simulated GPU's TensorRT (``crystal_rt.testing``).
Not verified here (needs an NVIDIA GPU + TensorRT): real TensorRT plans; ``crystal-rt doctor --gpu``
checks those on a GPU machine.
"""

from __future__ import annotations

from .modules import load_tensorrt, tensorrt_installed

__all__ = ["load_tensorrt", "tensorrt_installed"]
