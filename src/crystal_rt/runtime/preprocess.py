"""The preprocessing recipe on the CPU: its steps (CLAHE, resize, intensity, normalise or the model's
own transform) in the recipe's order, to the engine input (NCHW float32).

:func:`preprocess` composes the steps; every caller that needs an engine's input (the pipeline's
CPU stages, export validation, calibration, the Triton pre model, bench) uses it, so an engine
always sees the input it was trained and exported with (docs/contract.md, "Preprocessing contract";
``crystal_rt.spec`` for the recipe). The CUDA kernels implement the paper-shaped recipes (CLAHE
first, a resize, bit-depth intensity, normalise) on the device (``crystal_rt.cuda``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from time import perf_counter

import cv2
import numpy as np

from ..arith import cv2_u8_resize_is_portable
from ..errors import InvalidImage
from ..geometry import InputMap, input_map, letterbox_size, normalize_constants, resize_map
from ..spec import Clahe, ModelTransform, PreprocessSpec, Resize
from .bit_depth import to_training_bit_depth

_local = threading.local()


def _clahe(clip_limit: float, tile_grid: tuple[int, int]) -> cv2.CLAHE:
    """A CLAHE object per thread: ``cv2.CLAHE.apply`` keeps scratch buffers in the object, so
    sharing one between threads corrupts results."""
    cache: dict[tuple[float, tuple[int, int]], cv2.CLAHE] = _local.__dict__.setdefault("clahe", {})
    key = (clip_limit, tile_grid)
    if key not in cache:
        cache[key] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid)
    return cache[key]


def apply_clahe(image: np.ndarray, step: Clahe | PreprocessSpec | None) -> np.ndarray:
    """CLAHE exactly as ``cv2.createCLAHE(clip_limit, tile_grid).apply`` (``step``: a CLAHE step, or
    a recipe's; None or a recipe without CLAHE returns the image).

    Gray images directly. 8-bit RGB: on the L channel of ``cv2.COLOR_RGB2LAB`` and back.
    16-bit RGB (OpenCV has no 16-bit LAB): RGB/65535 to float LAB, L (0..100) scaled to uint16,
    16-bit CLAHE, back to float LAB, to RGB, rounded to uint16.
    """
    if isinstance(step, PreprocessSpec):
        step = step.clahe
    if step is None:
        return image
    clahe = _clahe(step.clip_limit, step.tile_grid)
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
    fixed: np.ndarray = np.clip(np.rint(scaled), -32768, 32767).astype(np.int32)
    return fixed


def resize_u8_portable(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's own 8-bit ``INTER_LINEAR`` (resize.cpp, the code x86 runs), in numpy: same size is a
    copy; exactly half on both axes is the "area fast" 2x2 mean ``(a + b + c + d + 2) >> 2``; else
    11-bit fixed-point weights, ``h = s0*w0 + s1*w1`` per row, then
    ``(((b0*(h0 >> 4)) >> 16) + ((b1*(h1 >> 4)) >> 16) + 2) >> 2``. Equal to the CUDA kernel."""
    src_h, src_w = image.shape[:2]
    if (width, height) == (src_w, src_h):
        same: np.ndarray = image.copy()
        return same
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


def letterbox(image: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize (cv2.INTER_LINEAR in the image's integer type, OpenCV's own code: ``resize_linear``) into
    the top-left of a black S x S (or H x W) canvas; the scale."""
    height, width = image.shape[:2]
    out_h, out_w = (size, size) if isinstance(size, int) else size
    scale, new_w, new_h = letterbox_size(height, width, (out_h, out_w))
    resized = image if (new_w, new_h) == (width, height) else resize_linear(image, new_w, new_h)
    canvas = np.zeros((out_h, out_w, *image.shape[2:]), dtype=image.dtype)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def resize(image: np.ndarray, step: Resize) -> tuple[np.ndarray, InputMap]:
    """The recipe's resize step: a letterbox canvas, or the image stretched to exactly H x W."""
    height, width = image.shape[:2]
    mapping = resize_map(height, width, step)
    if step.mode == "letterbox":
        canvas, _ = letterbox(image, step.hw)
        return canvas, mapping
    same = (step.width, step.height) == (width, height)
    return (image.copy() if same else resize_linear(image, step.width, step.height)), mapping


def normalize(canvas: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """[1, 3, H, W] float32 of an integer canvas: gray replicated, /255 or /65535 and the recipe's
    mean/std as one float32 ``x * gain + bias`` per channel (what the letterbox kernel computes)."""
    height, width = canvas.shape[:2]
    out = np.empty((1, 3, height, width), dtype=np.float32)
    plane = canvas.astype(np.float32) if canvas.ndim == 2 else None
    gains, biases = normalize_constants(spec, canvas.dtype)
    for c in range(3):
        src = plane if plane is not None else canvas[..., c].astype(np.float32)
        np.multiply(src, np.float32(gains[c]), out=out[0, c])
        out[0, c] += np.float32(biases[c])
    return out


def _planes(image: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 of an (H, W) or (H, W, 3) array (gray replicated)."""
    if image.ndim == 2:
        return np.repeat(image.astype(np.float32)[None], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(image, 2, 0)).astype(np.float32)


def intensity_minmax(image: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 ``(x - min) / (max - min)`` over all channels, as CHiMP computes it on its
    uint8 tensor (``x - min`` exact, then a float32 division). A constant image gives zeros."""
    low, high = int(image.min()), int(image.max())
    planes = _planes(image) - np.float32(low)
    if high == low:
        return np.zeros_like(planes)
    scaled: np.ndarray = planes / np.float32(high - low)
    return scaled


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``fma(a, b, c)``: the float64 product of two float32 is exact, one rounding after."""
    out: np.ndarray = (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
    return out


def _torch_linear_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) source indices and float32 weights for one axis:
    scale = in / out (float32), src = max(fma(scale, d + 0.5, -0.5), 0), i0 = floor(src),
    i1 = i0 + (i0 < in - 1), l1 = src - i0, l0 = 1 - l1."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.float64(scale) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (np.float32(1.0) - l1).astype(np.float32), l1


def interpolate_bilinear(planes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(planes[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]``
    in numpy, bit for bit as PyTorch's CPU kernel computes it where it is built with fused
    multiply-adds (the AVX2/AVX-512 kernels x86 machines run, and aarch64): the source coordinate
    ``fma(scale, d + 0.5, -0.5)``, each row ``fma(x0, w0, x1 * w1)``, then the rows alike."""
    _, in_h, in_w = planes.shape
    if (in_h, in_w) == (out_h, out_w):
        same: np.ndarray = planes.copy()
        return same
    y0, y1, wy0, wy1 = _torch_linear_axis(out_h, in_h)
    x0, x1, wx0, wx1 = _torch_linear_axis(out_w, in_w)
    r0, r1 = planes[:, y0], planes[:, y1]
    top = _fma32(r0[:, :, x0], wx0, r0[:, :, x1] * wx1)
    bottom = _fma32(r1[:, :, x0], wx0, r1[:, :, x1] * wx1)
    return _fma32(top, wy0[None, :, None], bottom * wy1[None, :, None])


def model_transform(planes: np.ndarray, step: ModelTransform) -> np.ndarray:
    """torchvision's GeneralizedRCNNTransform on (3, H, W) float32 in [0, 1]: ``(x - mean) / std``,
    the bilinear resize to min_size/max_size, zero padding to a multiple of size_divisible:
    [1, 3, H', W']."""
    mean = np.asarray(step.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(step.std, dtype=np.float32)[:, None, None]
    normed = ((planes - mean) / std).astype(np.float32)
    h, w = planes.shape[1:]
    rh, rw = step.resized_hw(h, w)
    resized = interpolate_bilinear(normed, rh, rw)
    ph, pw = step.padded_hw(rh, rw)
    out = np.zeros((1, 3, ph, pw), dtype=np.float32)
    out[0, :, :rh, :rw] = resized
    return out


def to_tensor(canvas: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The recipe's float steps on the resized integer ``canvas``: intensity, then normalise (or the
    model transform): the engine input [1, 3, H, W]."""
    transform = spec.transform
    if spec.intensity.mode == "bit_depth":
        if transform is None:
            return normalize(canvas, spec)
        top = np.float32(65535.0 if canvas.dtype == np.uint16 else 255.0)
        planes = _planes(canvas) / top
    else:
        planes = intensity_minmax(canvas)
    if transform is not None:
        return model_transform(planes, transform)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    out: np.ndarray = ((planes - mean) / std).astype(np.float32)[None]
    return out


@dataclass(frozen=True)
class Preprocessed:
    """The network input plus what postprocessing needs to map results back."""

    tensor: np.ndarray  # float32 [1, 3, H, W]
    mapping: InputMap
    height: int
    width: int

    @property
    def scale(self) -> float:
        """The letterbox scale (paper recipes)."""
        return self.mapping.scale


def recipe_color(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The image the recipe's first step sees: at the bit depth the model was trained on (a 16-bit
    image mapped to 8 bits for a model trained on 8-bit images, ``bit_depth.to_training_bit_depth``),
    and a gray image as three equal channels for a recipe with ``color="rgb"`` (CHiMP's
    ``cv2.imread`` colour mode), else as decoded."""
    pixels = to_training_bit_depth(pixels, spec.training_bit_depth)
    if spec.color == "rgb" and pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def resized(
    pixels: np.ndarray, spec: PreprocessSpec, timings: dict[str, float] | None = None
) -> tuple[np.ndarray, InputMap]:
    """The recipe's integer steps (CLAHE and the resize, in its order): the resized canvas and the
    map back to the image. ``timings`` receives ``clahe`` and ``letterbox`` (the resize) in ms."""
    clahe_ms = resize_ms = 0.0
    image = recipe_color(pixels, spec)
    for step in spec.steps:
        t0 = perf_counter()
        if isinstance(step, Clahe):
            image = apply_clahe(image, step)
            clahe_ms += perf_counter() - t0
        elif isinstance(step, Resize):
            image, _ = resize(image, step)
            resize_ms += perf_counter() - t0
    if timings is not None:
        timings["clahe"] = clahe_ms * 1e3
        timings["letterbox"] = resize_ms * 1e3
    height, width = pixels.shape[:2]
    return image, input_map(height, width, spec)


def letterboxed(
    pixels: np.ndarray, spec: PreprocessSpec, timings: dict[str, float] | None = None
) -> tuple[np.ndarray, float]:
    """CLAHE then letterbox of a paper recipe, in the image's integer type: the S x S canvas and the
    scale (the stages before normalisation; training caches this)."""
    canvas, mapping = resized(pixels, spec, timings)
    return canvas, mapping.scale


def preprocess(
    pixels: np.ndarray, spec: PreprocessSpec, timings: dict[str, float] | None = None
) -> Preprocessed:
    """The engine input for decoded ``pixels``: the recipe's steps in order (the CPU stages).

    ``timings``, when given, receives ``clahe`` and ``letterbox`` (resize + intensity + normalise or
    model transform) in ms."""
    t0 = perf_counter()
    canvas, mapping = resized(pixels, spec, timings)
    tensor = to_tensor(canvas, spec)
    if timings is not None:
        timings["letterbox"] = (perf_counter() - t0) * 1e3 - timings["clahe"]
    height, width = pixels.shape[:2]
    return Preprocessed(tensor, mapping, height, width)


def check_image(image: np.ndarray, name: str | None = None) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise InvalidImage(f"expected uint8 or uint16 pixels, got {image.dtype}", path=name)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise InvalidImage(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}", path=name)
