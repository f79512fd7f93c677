"""Which OpenCV arithmetic this machine's cv2 computes, so that the CPU stages and the kernels agree.

Measured against opencv-python-headless 5.0.0 (x86-64 wheel natively; the aarch64 wheel under qemu,
``scripts/compare_opencv_arm64.py``):

* **x86-64** wheels round every float step (CLAHE, 16-bit and float resize), and 8-bit
  ``INTER_LINEAR`` is OpenCV's own 11-bit fixed-point code (with Intel IPP switched off, which
  ``preprocess.resize_linear`` does).
* **aarch64** wheels fuse multiply-adds (GCC's contraction, NEON ``v_muladd``): CLAHE moves by ±1 on
  ~0.001-0.1 % of pixels, 16-bit resize on ~0.1 %, float resize (mask paste) by 1 ulp on ~25 % of
  values; and 8-bit ``INTER_LINEAR`` goes to an optimised HAL (carotene/KleidiCV) that differs from
  OpenCV's own code by ±1 on ~18 % of pixels and cannot be switched off from Python.

crystal-rt therefore runs, on aarch64: CLAHE, 16-bit and float resize in cv2 with the kernels in the
fused arithmetic (``fma=1``); 8-bit resize in crystal-rt's own numpy implementation of OpenCV's
portable code (``preprocess.resize_u8_portable``), equal to x86 and to the kernels' one 8-bit
arithmetic. ``$CRYSTAL_RT_OPENCV_FLAVOUR=x86|aarch64`` overrides the choice made from
``platform.machine()`` (e.g. a self-built OpenCV with FMA on x86). See design note 22.
"""

from __future__ import annotations

import os
import platform

ENV = "CRYSTAL_RT_OPENCV_FLAVOUR"
FLAVOURS = ("x86", "aarch64")
AARCH64_MACHINES = ("aarch64", "arm64", "armv8l")


def opencv_flavour() -> str:
    value = os.environ.get(ENV, "").strip().lower()
    if value in FLAVOURS:
        return value
    return "aarch64" if platform.machine().lower() in AARCH64_MACHINES else "x86"


def opencv_fma() -> bool:
    """Whether cv2's float arithmetic here is fused (aarch64) rather than separately rounded (x86)."""
    return opencv_flavour() == "aarch64"


def cv2_u8_resize_is_portable() -> bool:
    """Whether cv2's 8-bit INTER_LINEAR resize here is OpenCV's own code (x86 with IPP off) rather
    than an aarch64 HAL's."""
    return opencv_flavour() == "x86"


def flavour_name(fma: bool) -> str:
    return "fused multiply-add (aarch64 OpenCV)" if fma else "separately rounded (x86-64 OpenCV)"
