"""Host-side geometry and kernel arguments for ``kernels/clahe.cu`` (pure Python + numpy, no CUDA).

Everything the CLAHE launch needs is computed here, exactly as ``docs/clahe-spec.md`` says
(tile sizes with OpenCV's padding quirk, the integer clip limit, float32 LUT scale and inverse tile
sizes), plus the launch geometry and the buffer sizes. The GPU launcher and the CPU-emulator tests
both use :class:`ClahePlan`, so the two can never disagree.

Launch sequence (one stream)::

    plan = ClahePlan.for_image(h, w, np.uint8, clip_limit=2.0, tile_grid=(8, 8))
    scratch = zeroed device buffer of plan.scratch_bytes (once; the kernels leave it zeroed)
    lut = device buffer of plan.lut_bytes
    launch plan.hist_kernel, grid=plan.hist_grid, block=plan.hist_block,
           shared=plan.hist_dynamic_smem, args=plan.hist_args(src, src_pitch, scratch, lut)
    launch plan.apply_kernel, grid=plan.apply_grid, block=plan.apply_block, shared=0,
           args=plan.apply_args(src, src_pitch, dst, dst_pitch, lut)

8-bit RGB (CLAHE on L of cv2.COLOR_RGB2LAB, then COLOR_LAB2RGB; exact for all 2^24 colours)::

    grid, block = pixel_launch(h, w)
    launch "rgb_to_lab_u8", grid, block, args=(rgb, rgb_pitch, L, l_pitch, ab, ab_pitch, w, h)  # LAB_ARGTYPES
    the gray sequence above on L (uint8, in place: src = dst = L)
    launch "lab_to_rgb_u8", grid, block, args=(L, l_pitch, ab, ab_pitch, rgb_out, rgb_pitch, w, h)

``L`` is a uint8 plane, ``ab`` a uint16 plane (``a | b << 8``), both ``h x w``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

Dim3 = tuple[int, int, int]

#: Largest histogram kept in shared memory (bins); larger ones (16-bit, bitShift < 3) use global atomics.
SMEM_HIST_MAX_BINS = 8192
#: Shared-memory budget for the privatised sub-histograms of the smem path (bytes).
SMEM_HIST_BUDGET = 32768
#: Pixels per thread along x in the apply kernel (``kPx`` in clahe.cu).
APPLY_PIXELS_PER_THREAD = 4
#: Target number of pixels one histogram block reads (sets the number of row splits per tile).
HIST_PIXELS_PER_BLOCK = 8192

#: ctypes types of the kernel parameters, in order (pointers as c_void_p, pitches in bytes).
HIST_ARGTYPES: tuple[type, ...] = (
    ctypes.c_void_p,  # src
    ctypes.c_int64,  # src_pitch (bytes)
    ctypes.c_int,  # width
    ctypes.c_int,  # height
    ctypes.c_int,  # tiles_x
    ctypes.c_int,  # tile_w
    ctypes.c_int,  # tile_h
    ctypes.c_int,  # shift
    ctypes.c_int,  # hist_size
    ctypes.c_int,  # clip_limit (counts; 0 = no clipping)
    ctypes.c_float,  # lut_scale
    ctypes.c_int,  # sub_hists (0 = global-memory histogram)
    ctypes.c_void_p,  # scratch (int32)
    ctypes.c_void_p,  # lut (T)
)
APPLY_ARGTYPES: tuple[type, ...] = (
    ctypes.c_void_p,  # src
    ctypes.c_int64,  # src_pitch (bytes)
    ctypes.c_void_p,  # dst
    ctypes.c_int64,  # dst_pitch (bytes)
    ctypes.c_int,  # width
    ctypes.c_int,  # height
    ctypes.c_int,  # tiles_x
    ctypes.c_int,  # tiles_y
    ctypes.c_int,  # shift
    ctypes.c_int,  # hist_size
    ctypes.c_float,  # inv_tw
    ctypes.c_float,  # inv_th
    ctypes.c_void_p,  # lut (T)
    ctypes.c_int,  # fma: aarch64 OpenCV's contracted arithmetic (crystal_rt/arith.py)
)


#: ctypes types of rgb_to_lab_u8 (rgb, rgb_pitch, L, l_pitch, ab, ab_pitch, width, height) and of
#: lab_to_rgb_u8 (L, l_pitch, ab, ab_pitch, rgb, rgb_pitch, width, height): the same sequence.
LAB_ARGTYPES: tuple[type, ...] = (
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int,
    ctypes.c_int,
)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ClahePlan:
    """Geometry, constants and launch configuration of one CLAHE call (see module docstring)."""

    height: int
    width: int
    bits: int  # 8 or 16
    clip: float  # the user's clipLimit (a C++ double)
    tiles_x: int
    tiles_y: int
    bit_shift: int
    # spec 1.1-1.3
    padded: bool  # histograms read a virtually BORDER_REFLECT_101-padded image
    tile_w: int
    tile_h: int
    area: int
    hist_size: int
    clip_limit: int  # in counts; 0 disables clipping
    lut_scale: float  # a float32 value: fl((hist_size - 1) / area)
    inv_tw: float  # float32: fl(1 / tile_w)
    inv_th: float  # float32: fl(1 / tile_h)
    # kernel 1 (histogram + LUT)
    hist_threads: int
    splits: int
    sub_hists: int
    # kernel 2 (apply)
    apply_block: Dim3
    apply_grid: Dim3
    fma: bool = False  # the interpolation as aarch64 OpenCV computes it (clahe-spec 1.9)

    @classmethod
    def for_image(
        cls,
        height: int,
        width: int,
        dtype: DTypeLike,
        clip_limit: float,
        tile_grid: tuple[int, int],
        bit_shift: int = 0,
        *,
        hist_threads: int | None = None,
        apply_block: tuple[int, int] = (32, 8),
        max_apply_blocks: int | None = None,
        max_splits: int | None = None,
        fma: bool = False,
    ) -> ClahePlan:
        """Plan for an ``height x width`` image of ``dtype`` (uint8/uint16).

        ``tile_grid`` is ``(tiles_x, tiles_y)`` as in ``cv2.createCLAHE(tileGridSize=...)``.
        ``hist_threads``/``apply_block``/``max_apply_blocks``/``max_splits`` only change the
        launch shape (the result is the same); the CPU emulator uses small values for speed.
        """
        dt = np.dtype(dtype)
        if dt == np.uint8:
            bits = 8
        elif dt == np.uint16:
            bits = 16
        else:
            raise ValueError(f"CLAHE needs uint8 or uint16 pixels, got {dt}")
        if height < 1 or width < 1:
            raise ValueError(f"empty image {height}x{width}")
        gx, gy = int(tile_grid[0]), int(tile_grid[1])
        if gx < 1 or gy < 1:
            raise ValueError(f"tile grid must be positive, got {tile_grid}")
        hist_size_full = 1 << bits
        if not 0 <= bit_shift < bits:
            raise ValueError(f"bit_shift must be in [0, {bits - 1}], got {bit_shift}")
        hist_size = hist_size_full >> bit_shift

        padded = width % gx != 0 or height % gy != 0
        tile_w = (width + gx - width % gx) // gx if padded else width // gx
        tile_h = (height + gy - height % gy) // gy if padded else height // gy
        area = tile_w * tile_h
        if area >= 2**31 or tile_w * gx > 2**31 - 1 or tile_h * gy > 2**31 - 1:
            raise ValueError("image too large for int32 tile arithmetic")

        clip = float(clip_limit)
        clip_count = 0
        if clip > 0.0:
            counts = clip * area / hist_size  # double, left to right
            # (int) truncates; out of int32 range x86's cvttsd2si yields INT_MIN, which max(., 1) makes 1
            clip_count = max(int(counts) if counts < 2.0**31 else -(2**31), 1)
        lut_scale = float(np.float32(hist_size - 1) / np.float32(area))
        inv_tw = float(np.float32(1.0) / np.float32(tile_w))
        inv_th = float(np.float32(1.0) / np.float32(tile_h))

        if hist_threads is None:
            hist_threads = 256 if hist_size <= SMEM_HIST_MAX_BINS else 1024
        if not 1 <= hist_threads <= 1024:
            raise ValueError(f"hist_threads must be in [1, 1024], got {hist_threads}")
        warps = _cdiv(hist_threads, 32)
        sub_hists = (
            max(1, min(warps, SMEM_HIST_BUDGET // (hist_size * 4))) if hist_size <= SMEM_HIST_MAX_BINS else 0
        )
        splits = max(1, min(tile_h, _cdiv(area, HIST_PIXELS_PER_BLOCK)))
        if max_splits is not None:
            splits = max(1, min(splits, max_splits))

        bx, by = int(apply_block[0]), int(apply_block[1])
        if bx < 1 or by < 1 or bx * by > 1024:
            raise ValueError(f"bad apply block {apply_block}")
        grid_x = _cdiv(width, bx * APPLY_PIXELS_PER_THREAD)
        grid_y = _cdiv(height, by)
        if max_apply_blocks is not None:
            grid_x = max(1, min(grid_x, max_apply_blocks))
            grid_y = max(1, min(grid_y, max(1, max_apply_blocks // grid_x)))
        grid_y = min(grid_y, 65535)

        return cls(
            height=height,
            width=width,
            bits=bits,
            clip=clip,
            tiles_x=gx,
            tiles_y=gy,
            bit_shift=bit_shift,
            padded=padded,
            tile_w=tile_w,
            tile_h=tile_h,
            area=area,
            hist_size=hist_size,
            clip_limit=clip_count,
            lut_scale=lut_scale,
            inv_tw=inv_tw,
            inv_th=inv_th,
            hist_threads=hist_threads,
            splits=splits,
            sub_hists=sub_hists,
            apply_block=(bx, by, 1),
            apply_grid=(grid_x, grid_y, 1),
            fma=bool(fma),
        )

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return np.dtype(np.uint8) if self.bits == 8 else np.dtype(np.uint16)

    @property
    def suffix(self) -> str:
        """Kernel name suffix: ``u8`` or ``u16``."""
        return f"u{self.bits}"

    @property
    def tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def hist_kernel(self) -> str:
        return f"clahe_hist_lut_{self.suffix}"

    @property
    def apply_kernel(self) -> str:
        return f"clahe_apply_{self.suffix}"

    @property
    def hist_grid(self) -> Dim3:
        return (self.tiles, self.splits, 1)

    @property
    def hist_block(self) -> Dim3:
        return (self.hist_threads, 1, 1)

    @property
    def hist_dynamic_smem(self) -> int:
        """Dynamic shared memory of the histogram kernel in bytes (0 on the global-memory path)."""
        return self.sub_hists * self.hist_size * 4

    @property
    def scratch_bytes(self) -> int:
        """int32 histograms (tiles x hist_size) + one uint32 counter per tile; zero it once."""
        return (self.tiles * self.hist_size + self.tiles) * 4

    @property
    def lut_bytes(self) -> int:
        return self.tiles * self.hist_size * self.dtype.itemsize

    # ---- kernel arguments, in parameter order (types: HIST_ARGTYPES / APPLY_ARGTYPES) ------------
    def hist_args(self, src: int, src_pitch: int, scratch: int, lut: int) -> tuple[int | float, ...]:
        return (
            src,
            src_pitch,
            self.width,
            self.height,
            self.tiles_x,
            self.tile_w,
            self.tile_h,
            self.bit_shift,
            self.hist_size,
            self.clip_limit,
            self.lut_scale,
            self.sub_hists,
            scratch,
            lut,
        )

    def apply_args(
        self, src: int, src_pitch: int, dst: int, dst_pitch: int, lut: int
    ) -> tuple[int | float, ...]:
        return (
            src,
            src_pitch,
            dst,
            dst_pitch,
            self.width,
            self.height,
            self.tiles_x,
            self.tiles_y,
            self.bit_shift,
            self.hist_size,
            self.inv_tw,
            self.inv_th,
            lut,
            int(self.fma),
        )


def pixel_launch(
    height: int, width: int, block: tuple[int, int] = (32, 8), max_blocks: int | None = None
) -> tuple[Dim3, Dim3]:
    """``(grid, block)`` for the one-thread-per-pixel colour kernels (grid-stride, so any grid works)."""
    bx, by = block
    grid_x = _cdiv(width, bx)
    grid_y = min(_cdiv(height, by), 65535)
    if max_blocks is not None:
        grid_x = max(1, min(grid_x, max_blocks))
        grid_y = max(1, min(grid_y, max(1, max_blocks // grid_x)))
    return (grid_x, grid_y, 1), (bx, by, 1)
