"""The preprocessing contract on the CPU: CLAHE (OpenCV) -> letterbox -> normalise to NCHW float32.

:func:`preprocess` composes the stages; every caller that needs an engine's input (the pipeline's
CPU stages, export validation, calibration, the Triton pre model, bench) uses it, so an engine
always sees the input it was trained and exported with (DESIGN.md, "Preprocessing contract"). The
CUDA kernels implement the same stages on the device (``crystal_rt.cuda``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from time import perf_counter

import cv2
import numpy as np

from ..arith import cv2_u8_resize_is_portable
from ..errors import InvalidImage
from ..geometry import letterbox_size, normalize_constants
from ..spec import PreprocessSpec

_local = threading.local()


def _clahe(clip_limit: float, tile_grid: tuple[int, int]) -> cv2.CLAHE:
    """A CLAHE object per thread: ``cv2.CLAHE.apply`` keeps scratch buffers in the object, so
    sharing one between threads corrupts results."""
    cache: dict[tuple[float, tuple[int, int]], cv2.CLAHE] = _local.__dict__.setdefault("clahe", {})
    key = (clip_limit, tile_grid)
    if key not in cache:
        cache[key] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid)
    return cache[key]


def apply_clahe(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """CLAHE exactly as ``cv2.createCLAHE(clip_limit, tile_grid).apply``.

    Gray images directly. 8-bit RGB: on the L channel of ``cv2.COLOR_RGB2LAB`` and back.
    16-bit RGB (OpenCV has no 16-bit LAB): RGB/65535 to float LAB, L (0..100) scaled to uint16,
    16-bit CLAHE, back to float LAB, to RGB, rounded to uint16.
    """
    if not spec.clahe:
        return image
    clahe = _clahe(float(spec.clip_limit), spec.tile_grid)
    if image.ndim == 2:
        out: np.ndarray = clahe.apply(image)
        return out
    if image.dtype == np.uint8:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    lab_f = cv2.cvtColor(image.astype(np.float32) * np.float32(1.0 / 65535.0), cv2.COLOR_RGB2LAB)
    lum = np.clip(np.rint(lab_f[..., 0] * (65535.0 / 100.0)), 0, 65535).astype(np.uint16)
    lab_f[..., 0] = clahe.apply(lum).astype(np.float32) * np.float32(100.0 / 65535.0)
    rgb: np.ndarray = cv2.cvtColor(lab_f, cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 65535.0), 0, 65535).astype(np.uint16)


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(..., INTER_LINEAR)`` computed by OpenCV's own code, never by a vendor library.

    The x86_64 opencv-python wheels hand 16-bit and float32 linear resizes to Intel IPP, which rounds
    differently (up to 2 steps on ~18 % of 16-bit pixels): IPP is switched off for this call (a
    per-thread setting in OpenCV). The aarch64 wheels send 8-bit linear resizes to an optimised HAL
    (carotene/KleidiCV, ±1 on ~18 % of pixels) that cannot be switched off: there 8-bit images go to
    :func:`resize_u8_portable`, OpenCV's own arithmetic in numpy (``crystal_rt.arith``). The CUDA
    kernels compute the same on every platform.
    """
    if image.dtype == np.uint8 and not cv2_u8_resize_is_portable():
        return resize_u8_portable(image, width, height)
    use_ipp = cv2.ipp.useIPP()
    if use_ipp:
        cv2.ipp.setUseIPP(False)
    try:
        out: np.ndarray = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    finally:
        if use_ipp:
            cv2.ipp.setUseIPP(True)
    return out


def _linear_axis(n_dst: int, n_src: int, clamp_frac: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's source indices (i0, i1) and float32 fraction of each destination index (resize.cpp:
    ``fx = (float)((d + 0.5) * scale - 0.5)`` in double, ``sx = floor(fx)``; x clamps its fraction)."""
    scale = 1.0 / (n_dst / n_src)
    frac = ((np.arange(n_dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(frac).astype(np.int64)
    frac = (frac - start.astype(np.float32)).astype(np.float32)
    if clamp_frac:
        low, high = start < 0, start >= n_src - 1
        frac[low | high] = 0.0
        start[low] = 0
        start[high] = n_src - 1
    return np.clip(start, 0, n_src - 1), np.clip(start + 1, 0, n_src - 1), frac


def _fixed_weight(weight: np.ndarray) -> np.ndarray:
    """saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE), INTER_RESIZE_COEF_SCALE = 2048."""
    scaled = (weight.astype(np.float32) * np.float32(2048.0)).astype(np.float32)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int32)


def resize_u8_portable(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's own 8-bit ``INTER_LINEAR`` (resize.cpp, the code x86 runs), in numpy: same size is a
    copy; exactly half on both axes is the "area fast" 2x2 mean ``(a + b + c + d + 2) >> 2``; else
    11-bit fixed-point weights, ``h = s0*w0 + s1*w1`` per row, then
    ``(((b0*(h0 >> 4)) >> 16) + ((b1*(h1 >> 4)) >> 16) + 2) >> 2``. Equal to the CUDA kernel."""
    src_h, src_w = image.shape[:2]
    if (width, height) == (src_w, src_h):
        return image.copy()
    if src_w == 2 * width and src_h == 2 * height:
        s = image.astype(np.int32)
        return ((s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2] + 2) >> 2).astype(np.uint8)
    x0, x1, fx = _linear_axis(width, src_w, True)
    y0, y1, fy = _linear_axis(height, src_h, False)
    a0, a1 = _fixed_weight(np.float32(1.0) - fx), _fixed_weight(fx)
    b0, b1 = _fixed_weight(np.float32(1.0) - fy), _fixed_weight(fy)
    col = (slice(None), None) if image.ndim == 3 else (slice(None),)
    row = (slice(None), None, None) if image.ndim == 3 else (slice(None), None)
    rows0, rows1 = image[y0].astype(np.int32), image[y1].astype(np.int32)
    h0 = rows0[:, x0] * a0[col] + rows0[:, x1] * a1[col]
    h1 = rows1[:, x0] * a0[col] + rows1[:, x1] * a1[col]
    out = (((b0[row] * (h0 >> 4)) >> 16) + ((b1[row] * (h1 >> 4)) >> 16) + 2) >> 2
    resized: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return resized


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize (cv2.INTER_LINEAR in the image's integer type, OpenCV's own code: ``resize_linear``) into
    the top-left of a black S x S canvas."""
    height, width = image.shape[:2]
    scale, new_w, new_h = letterbox_size(height, width, size)
    resized = image if (new_w, new_h) == (width, height) else resize_linear(image, new_w, new_h)
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def normalize(canvas: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """[1, 3, S, S] float32: gray replicated, /255 or /65535, ImageNet mean/std."""
    size = canvas.shape[0]
    out = np.empty((1, 3, size, size), dtype=np.float32)
    plane = canvas.astype(np.float32) if canvas.ndim == 2 else None
    gains, biases = normalize_constants(spec, canvas.dtype)
    for c in range(3):
        src = plane if plane is not None else canvas[..., c].astype(np.float32)
        np.multiply(src, np.float32(gains[c]), out=out[0, c])
        out[0, c] += np.float32(biases[c])
    return out


@dataclass(frozen=True)
class Preprocessed:
    """The network input plus what postprocessing needs to map results back."""

    tensor: np.ndarray  # float32 [1, 3, S, S]
    scale: float
    height: int
    width: int


def letterboxed(
    pixels: np.ndarray, spec: PreprocessSpec, timings: dict[str, float] | None = None
) -> tuple[np.ndarray, float]:
    """CLAHE then letterbox, in the image's integer type: the S x S canvas and the scale (the stages
    before normalisation; training caches this). ``timings`` receives ``clahe`` in ms."""
    t0 = perf_counter()
    enhanced = apply_clahe(pixels, spec)
    t1 = perf_counter()
    canvas, scale = letterbox(enhanced, spec.input_size)
    if timings is not None:
        timings["clahe"] = (t1 - t0) * 1e3
        timings["letterbox"] = (perf_counter() - t1) * 1e3
    return canvas, scale


def preprocess(
    pixels: np.ndarray, spec: PreprocessSpec, timings: dict[str, float] | None = None
) -> Preprocessed:
    """The engine input for decoded ``pixels``: CLAHE, letterbox, normalise (the CPU stages).

    ``timings``, when given, receives ``clahe`` and ``letterbox`` (letterbox + normalise) in ms."""
    t0 = perf_counter()
    canvas, scale = letterboxed(pixels, spec, timings)
    tensor = normalize(canvas, spec)
    if timings is not None:
        timings["letterbox"] = (perf_counter() - t0) * 1e3 - timings["clahe"]
    height, width = pixels.shape[:2]
    return Preprocessed(tensor, scale, height, width)


def check_image(image: np.ndarray, name: str | None = None) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise InvalidImage(f"expected uint8 or uint16 pixels, got {image.dtype}", path=name)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise InvalidImage(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}", path=name)
