"""OpenCV's ``INTER_LINEAR`` resize of 16-bit and float32 images in numpy, in both OpenCV arithmetics.

``resize_reference(img, width, height, fma=False)`` follows resize.cpp's portable code as the x86-64
wheels run it with IPP off; ``fma=True`` as the aarch64 wheels run it: the source coordinate
``(d + 0.5) * scale - 0.5`` is one double FMA, and each ``a*b + c*d`` of the horizontal and vertical
passes is ``fma(a, b, c*d)`` (NEON ``v_muladd``). Checked against opencv-python-headless 5.0.0 on
both (``scripts/compare_opencv_arm64.py``). 8-bit images: ``preprocess.resize_u8_portable``.

Test support; the CUDA letterbox (16-bit) and paste kernels are checked against it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .clahe_reference import fma32


def _axis(n_dst: int, n_src: int, clamp_frac: bool, fma: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = 1.0 / (n_dst / n_src)
    d = np.arange(n_dst, dtype=np.float64)
    if fma:  # one rounding of the exact (d + 0.5) * scale - 0.5
        exact = [Fraction(float(v) + 0.5) * Fraction(scale) - Fraction(1, 2) for v in d]
        pos = np.array([float(x) for x in exact], dtype=np.float64)
    else:
        pos = (d + 0.5) * scale - 0.5
    frac = pos.astype(np.float32)
    start = np.floor(frac).astype(np.int64)
    frac = (frac - start.astype(np.float32)).astype(np.float32)
    if clamp_frac:
        low, high = start < 0, start >= n_src - 1
        frac[low | high] = 0.0
        start[low] = 0
        start[high] = n_src - 1
    return np.clip(start, 0, n_src - 1), np.clip(start + 1, 0, n_src - 1), frac


def _mul_add(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, fma: bool) -> np.ndarray:
    if fma:
        return fma32(a, b, (c * d).astype(np.float32))
    out: np.ndarray = ((a * b).astype(np.float32) + (c * d).astype(np.float32)).astype(np.float32)
    return out


def resize_reference(img: np.ndarray, width: int, height: int, *, fma: bool = False) -> np.ndarray:
    """uint16 or float32, gray (H, W) or (H, W, C)."""
    src_h, src_w = img.shape[:2]
    if (width, height) == (src_w, src_h):
        same: np.ndarray = img.copy()
        return same
    data = img.astype(np.float32)
    if src_w == 2 * width and src_h == 2 * height:
        a, b = data[0::2, 0::2], data[0::2, 1::2]
        c, d = data[1::2, 0::2], data[1::2, 1::2]
        if img.dtype == np.uint16:
            s = img.astype(np.int64)
            area = (s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2] + 2) >> 2
            return area.astype(np.uint16)
        out = ((a + b) + c) + d  # OpenCV's scalar order; its 128-bit SIMD code does (a + b) + (c + d)
        simd = (width // 4) * 4
        out[:, :simd] = ((a + b) + (c + d))[:, :simd]
        half: np.ndarray = (out * np.float32(0.25)).astype(np.float32)
        return half
    x0, x1, fx = _axis(width, src_w, True, fma)
    y0, y1, fy = _axis(height, src_h, False, fma)
    col = (slice(None), None) if img.ndim == 3 else (slice(None),)
    row = (slice(None), None, None) if img.ndim == 3 else (slice(None), None)
    a0, b0 = (np.float32(1) - fx).astype(np.float32), (np.float32(1) - fy).astype(np.float32)
    r0, r1 = data[y0], data[y1]
    h0 = _mul_add(r0[:, x0], a0[col], r0[:, x1], fx[col], fma)
    h1 = _mul_add(r1[:, x0], a0[col], r1[:, x1], fx[col], fma)
    v = _mul_add(h0, b0[row], h1, fy[row], fma)
    if img.dtype == np.uint16:
        rounded: np.ndarray = np.clip(np.rint(v), 0, 65535).astype(np.uint16)
        return rounded
    return v
