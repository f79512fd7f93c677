"""Which OpenCV arithmetic the kernels reproduce: the x86 wheels' (every float operation rounded) or
aarch64 builds' (the compiler and NEON's ``v_muladd`` fuse multiply-adds: Jetson).

The GPU path must equal the CPU fallback it is compared with, which is the OpenCV of the machine:
``opencv_fma()`` is True on aarch64/arm64 (``platform.machine()``) and False elsewhere, unless
``$CRYSTAL_RT_OPENCV_FMA`` says ``1``/``0`` (e.g. a self-built OpenCV with ``-march=native`` on x86,
or comparing with results computed on another machine). ``crystal-rt doctor`` reports which
arithmetic the installed cv2 uses for CLAHE. See clahe-spec 1.9 and design note 22.
"""

from __future__ import annotations

import os
import platform

ENV = "CRYSTAL_RT_OPENCV_FMA"
FMA_MACHINES = ("aarch64", "arm64", "armv8l")


def opencv_fma() -> bool:
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "fma"):
        return True
    if value in ("0", "false", "no", "plain"):
        return False
    return platform.machine().lower() in FMA_MACHINES


def flavour_name(fma: bool) -> str:
    return "fma (aarch64 OpenCV)" if fma else "plain (x86-64 OpenCV)"
