"""The kernels' launch arithmetic on the host (no CUDA): grid, block and arguments of the letterbox
and paste kernels, and the paste output layout, in numpy, so that the CPU-emulator tests check
exactly what the GPU path launches.

Buffers and layouts
-------------------
* letterbox (``kernels/letterbox.cu``): source uint8/uint16, gray or interleaved RGB, rows
  ``src_pitch`` bytes apart, on the device; output float32 ``[1, 3, H, W]`` (the engine input),
  contiguous. See :func:`letterbox_launch`.
* paste (``kernels/paste.cu``): ``probs`` float32 ``[K, M, M]`` on the device (the engine's
  ``masks`` output); per selected instance 9 int32 (:data:`PASTE_META_FIELDS`) and one int64 byte
  offset; output one uint8 buffer holding each instance's crop (``crop_h x crop_w``, 0/1,
  row-major) at its offset. See :func:`paste_layout`.
* CLAHE (``kernels/clahe.cu``, gray images): :class:`crystal_rt.cuda.clahe_plan.ClahePlan`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, InvalidImage
from ..geometry import InputMap, expanded_box, normalize_constants, resize_map
from ..spec import PreprocessSpec

Dim3 = tuple[int, int, int]

LETTERBOX_BLOCK: Dim3 = (32, 8, 1)
PASTE_BLOCK: Dim3 = (256, 1, 1)
#: Most blocks per instance of the paste kernel (threads stride over larger crops).
PASTE_MAX_BLOCKS_PER_INSTANCE = 256

#: letterbox kernel parameters, in order (pointers c_void_p, pitch in bytes).
LETTERBOX_ARGTYPES: tuple[type, ...] = (
    ctypes.c_void_p,  # src
    ctypes.c_int64,  # src_pitch (bytes)
    ctypes.c_int,  # src_w
    ctypes.c_int,  # src_h
    ctypes.c_int,  # channels (1 or 3)
    ctypes.c_int,  # new_w
    ctypes.c_int,  # new_h
    ctypes.c_int,  # out_w W
    ctypes.c_int,  # out_h H
    ctypes.c_float,  # gain0
    ctypes.c_float,  # gain1
    ctypes.c_float,  # gain2
    ctypes.c_float,  # bias0
    ctypes.c_float,  # bias1
    ctypes.c_float,  # bias2
    ctypes.c_void_p,  # out float32 [3, H, W]
    ctypes.c_int,  # fma: aarch64 OpenCV's fused arithmetic (crystal_rt/arith.py)
)
#: paste kernel parameters, in order.
PASTE_ARGTYPES: tuple[type, ...] = (
    ctypes.c_void_p,  # probs float32 [K, M, M]
    ctypes.c_int,  # M
    ctypes.c_void_p,  # meta int32 [N, 9]
    ctypes.c_void_p,  # offsets int64 [N]
    ctypes.c_int,  # N
    ctypes.c_void_p,  # out uint8
    ctypes.c_int,  # fma
)
PASTE_META_FIELDS: tuple[str, ...] = (
    "prob_index",
    "ex1",
    "ey1",
    "box_w",
    "box_h",
    "x0",
    "y0",
    "crop_w",
    "crop_h",
)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch: name, geometry and the parameters (types: ``argtypes``)."""

    kernel: str
    grid: Dim3
    block: Dim3
    args: tuple[int | float, ...]
    argtypes: tuple[type, ...]
    shared_bytes: int = 0


def letterbox_launch(
    src: int,
    src_pitch: int,
    height: int,
    width: int,
    channels: int,
    dtype: Any,
    spec: PreprocessSpec,
    out: int,
    *,
    block: Dim3 = LETTERBOX_BLOCK,
    max_grid: tuple[int, int] | None = None,
    fma: bool = False,
) -> tuple[KernelLaunch, InputMap]:
    """The letterbox (or stretch) + normalise launch for a ``height x width`` image, and the map back
    to the image (:class:`~crystal_rt.geometry.InputMap`) of the recipe's resize.

    ``max_grid`` caps the grid (the kernel strides over the canvas); the emulator uses it for speed.
    """
    dt = np.dtype(dtype)
    if dt not in (np.uint8, np.uint16):
        raise InvalidImage(f"expected uint8 or uint16 pixels, got {dt}")
    if channels not in (1, 3):
        raise InvalidImage(f"expected a gray or RGB image, got {channels} channels")
    if height < 1 or width < 1:
        raise InvalidImage(f"empty image {height}x{width}")
    if not spec.is_paper_shaped:
        raise BackendUnavailable(
            "the letterbox kernel computes recipes of CLAHE, a resize, bit-depth intensity and "
            "normalisation; this recipe's float steps run on the CPU"
        )
    out_h, out_w = spec.resize.hw
    mapping = resize_map(height, width, spec.resize)
    gains, biases = normalize_constants(spec, dt)
    gx, gy = _cdiv(out_w, block[0]), _cdiv(out_h, block[1])
    if max_grid is not None:
        gx, gy = max(1, min(gx, max_grid[0])), max(1, min(gy, max_grid[1]))
    kernel = "crt_letterbox_normalize_u8" if dt == np.uint8 else "crt_letterbox_normalize_u16"
    args = (
        src, src_pitch, width, height, channels, mapping.new_w, mapping.new_h, out_w, out_h,
        *gains, *biases, out, int(fma),
    )  # fmt: skip
    return KernelLaunch(kernel, (gx, gy, 1), block, args, LETTERBOX_ARGTYPES), mapping


@dataclass(frozen=True)
class PasteLayout:
    """Per-instance expanded boxes and crops (as ``postprocess.paste_mask``), output offsets."""

    meta: np.ndarray  # int32 [N, 9], columns PASTE_META_FIELDS
    offsets: np.ndarray  # int64 [N], byte offset of each crop in the output
    total_bytes: int
    height: int
    width: int

    def __len__(self) -> int:
        return int(self.meta.shape[0])

    def crop(self, out: np.ndarray, i: int) -> tuple[np.ndarray, int, int]:
        """Instance ``i``'s boolean crop from the kernel's output buffer, with its (x0, y0)."""
        _, _, _, _, _, x0, y0, cw, ch = (int(v) for v in self.meta[i])
        start = int(self.offsets[i])
        crop = out[start : start + cw * ch].reshape(ch, cw).astype(bool)
        return crop, (x0 if cw else 0), (y0 if ch else 0)


def paste_layout(
    boxes: np.ndarray | Sequence[Sequence[float]],
    height: int,
    width: int,
    m: int = 28,
    prob_indices: Sequence[int] | None = None,
) -> PasteLayout:
    """Expanded boxes, crops and output offsets for pasting ``boxes`` (x1, y1, x2, y2, original pixels)."""
    rows: list[list[int]] = []
    offsets: list[int] = []
    total = 0
    for i, box in enumerate(boxes):
        ex1, ey1, ex2, ey2 = expanded_box(box, m)
        box_w, box_h = max(ex2 - ex1 + 1, 1), max(ey2 - ey1 + 1, 1)
        x0, y0 = max(ex1, 0), max(ey1, 0)
        xe, ye = min(ex2 + 1, width), min(ey2 + 1, height)
        crop_w, crop_h = (xe - x0, ye - y0) if (xe > x0 and ye > y0) else (0, 0)
        index = int(prob_indices[i]) if prob_indices is not None else i
        rows.append([index, ex1, ey1, box_w, box_h, x0, y0, crop_w, crop_h])
        offsets.append(total)
        total += crop_w * crop_h
    meta = np.array(rows, dtype=np.int32).reshape(-1, len(PASTE_META_FIELDS))
    return PasteLayout(meta, np.array(offsets, dtype=np.int64), total, height, width)


def paste_launch(
    probs: int, m: int, meta: int, offsets: int, layout: PasteLayout, out: int, fma: bool = False
) -> KernelLaunch:
    """The paste launch for ``layout`` (``meta``/``offsets``/``out``: device pointers)."""
    n = len(layout)
    largest = int((layout.meta[:, 7].astype(np.int64) * layout.meta[:, 8]).max()) if n else 0
    gx = max(1, min(PASTE_MAX_BLOCKS_PER_INSTANCE, _cdiv(largest, PASTE_BLOCK[0])))
    args = (probs, m, meta, offsets, n, out, int(fma))
    return KernelLaunch("crt_paste_masks", (gx, max(n, 1), 1), PASTE_BLOCK, args, PASTE_ARGTYPES)
