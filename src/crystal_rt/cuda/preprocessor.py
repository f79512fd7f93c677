"""The GPU stages' launchers: CLAHE then letterbox + normalise into the engine input
(``GpuPreprocessor``), and mask pasting (``GpuMaskPaster``), on a caller's stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..arith import opencv_fma
from ..errors import BackendUnavailable
from ..geometry import InputMap
from ..spec import PreprocessSpec
from .driver import as_stream, check, driver
from .launches import KernelLaunch, PasteLayout, letterbox_launch, paste_launch, paste_layout
from .memory import DeviceBuffer, download
from .module import Module


class GpuPreprocessor:
    """CLAHE (``kernels/clahe.cu``) then letterbox + normalise into the engine input, on one stream.

    Gray uint8/uint16 images: CLAHE directly. 8-bit RGB: ``rgb_to_lab_u8`` -> CLAHE on L (in place)
    -> ``lab_to_rgb_u8``, as ``preprocess.apply_clahe``. 16-bit RGB with CLAHE is not available on
    the GPU (the CPU path goes through float LAB): BackendUnavailable. Nothing is synchronised;
    ``src`` stays untouched (CLAHE writes internal buffers). One instance per stream/thread.
    """

    def __init__(self, spec: PreprocessSpec, device: int = 0, *, fma: bool | None = None) -> None:
        self.spec = spec
        self.fma = opencv_fma() if fma is None else fma  # match this machine's OpenCV (crystal_rt/arith.py)
        self.letterbox = Module("letterbox", device)
        self.clahe = Module("clahe", device) if spec.clahe else None
        self._scratch = DeviceBuffer()
        self._scratch_zeroed = 0  # bytes at the start of _scratch known to be zero
        self._lut = DeviceBuffer()
        self._plane = DeviceBuffer()  # CLAHE output (gray) or the L plane (RGB)
        self._ab = DeviceBuffer()
        self._rgb = DeviceBuffer()

    @staticmethod
    def has_clahe(dtype: Any, channels: int) -> bool:
        """Whether the CLAHE kernels handle this kind of image (gray 8/16-bit, 8-bit RGB)."""
        return channels == 1 or np.dtype(dtype) == np.uint8

    def clahe_async(
        self,
        src: int,
        src_pitch: int,
        height: int,
        width: int,
        dtype: Any,
        channels: int,
        stream: Any = None,
    ) -> tuple[int, int]:
        """Queue CLAHE of the device image ``src``; returns (pointer, pitch) of the enhanced image (an
        internal buffer, valid until the next call). ``src`` stays untouched."""
        dt = np.dtype(dtype)
        if self.clahe is None:
            raise BackendUnavailable("this PreprocessSpec has no CLAHE (clahe=off)")
        if channels == 1:
            dst_pitch = width * dt.itemsize
            dst = self._plane.reserve(dst_pitch * height)
            self._run_clahe(src, src_pitch, dst, dst_pitch, height, width, dt, stream)
            return dst, dst_pitch
        if dt == np.uint8:
            return self._run_clahe_rgb8(src, src_pitch, height, width, stream)
        raise BackendUnavailable(
            "GPU CLAHE handles gray and 8-bit RGB images; 16-bit RGB needs the CPU path "
            "(float LAB): preprocess it on the CPU or set clahe=off"
        )

    def letterbox_async(
        self,
        image: int,
        pitch: int,
        height: int,
        width: int,
        dtype: Any,
        channels: int,
        out: int,
        stream: Any = None,
    ) -> InputMap:
        """Queue letterbox (or stretch) + normalise of the device image into ``out`` (float32
        [1, 3, H, W]); returns the map back to the image."""
        launch_spec, mapping = letterbox_launch(
            image, pitch, height, width, channels, dtype, self.spec, out, fma=self.fma
        )
        self.letterbox.launch(launch_spec, stream)
        return mapping

    def __call__(
        self,
        src: int,
        src_pitch: int,
        height: int,
        width: int,
        dtype: Any,
        channels: int,
        out: int,
        stream: Any = None,
    ) -> InputMap:
        """Queue CLAHE (where the spec has it) then letterbox + normalise of the device image ``src``
        into ``out`` (float32 [1, 3, H, W]); returns the map back to the image for postprocessing."""
        image, pitch = src, src_pitch
        if self.clahe is not None:
            image, pitch = self.clahe_async(src, src_pitch, height, width, dtype, channels, stream)
        return self.letterbox_async(image, pitch, height, width, dtype, channels, out, stream)

    def _run_clahe(
        self,
        src: int,
        src_pitch: int,
        dst: int,
        dst_pitch: int,
        height: int,
        width: int,
        dt: np.dtype[Any],
        stream: Any,
    ) -> None:
        from .clahe_plan import APPLY_ARGTYPES, HIST_ARGTYPES, ClahePlan

        step = self.spec.clahe
        if self.clahe is None or step is None:
            raise BackendUnavailable("this recipe has no CLAHE step")
        plan = ClahePlan.for_image(height, width, dt, step.clip_limit, step.tile_grid, fma=self.fma)
        if plan.scratch_bytes > self._scratch_zeroed:
            scratch = self._scratch.reserve(plan.scratch_bytes)
            drv = driver()
            check(
                drv.cuMemsetD8Async(scratch, 0, self._scratch.nbytes, drv.CUstream(as_stream(stream))),
                "cuMemsetD8Async",
            )
            self._scratch_zeroed = self._scratch.nbytes  # the kernels leave the scratch zeroed again
        scratch = self._scratch.ptr
        lut = self._lut.reserve(plan.lut_bytes)
        self.clahe.launch(
            KernelLaunch(
                plan.hist_kernel,
                plan.hist_grid,
                plan.hist_block,
                plan.hist_args(src, src_pitch, scratch, lut),
                HIST_ARGTYPES,
                plan.hist_dynamic_smem,
            ),
            stream,
        )
        self.clahe.launch(
            KernelLaunch(
                plan.apply_kernel,
                plan.apply_grid,
                plan.apply_block,
                plan.apply_args(src, src_pitch, dst, dst_pitch, lut),
                APPLY_ARGTYPES,
            ),
            stream,
        )

    def _run_clahe_rgb8(
        self, src: int, src_pitch: int, height: int, width: int, stream: Any
    ) -> tuple[int, int]:
        from .clahe_plan import LAB_ARGTYPES, pixel_launch

        assert self.clahe is not None
        l_pitch, ab_pitch, rgb_pitch = width, 2 * width, 3 * width
        lum = self._plane.reserve(l_pitch * height)
        ab = self._ab.reserve(ab_pitch * height)
        rgb = self._rgb.reserve(rgb_pitch * height)
        grid, block = pixel_launch(height, width)
        self.clahe.launch(
            KernelLaunch(
                "rgb_to_lab_u8",
                grid,
                block,
                (src, src_pitch, lum, l_pitch, ab, ab_pitch, width, height),
                LAB_ARGTYPES,
            ),
            stream,
        )
        self._run_clahe(lum, l_pitch, lum, l_pitch, height, width, np.dtype(np.uint8), stream)
        self.clahe.launch(
            KernelLaunch(
                "lab_to_rgb_u8",
                grid,
                block,
                (lum, l_pitch, ab, ab_pitch, rgb, rgb_pitch, width, height),
                LAB_ARGTYPES,
            ),
            stream,
        )
        return rgb, rgb_pitch

    def close(self) -> None:
        for buf in (self._scratch, self._lut, self._plane, self._ab, self._rgb):
            buf.free()
        self._scratch_zeroed = 0
        self.letterbox.close()
        if self.clahe is not None:
            self.clahe.close()


class GpuMaskPaster:
    """Paste the engine's M x M mask probabilities (on the device) into per-instance binary crops."""

    def __init__(self, device: int = 0, *, fma: bool | None = None) -> None:
        self.fma = opencv_fma() if fma is None else fma
        self.module = Module("paste", device)
        self._meta = DeviceBuffer()
        self._offsets = DeviceBuffer()
        self._out = DeviceBuffer()

    def launch_async(self, probs: int, m: int, layout: PasteLayout, stream: Any = None) -> int:
        """Queue the paste for ``layout``; returns the device pointer of the output (valid until the
        next call). ``probs``: device pointer to float32 [K, M, M]."""
        if not len(layout):
            return 0
        meta = self._meta.upload(layout.meta.astype(np.int32), stream)
        offsets = self._offsets.upload(layout.offsets.astype(np.int64), stream)
        out = self._out.reserve(max(layout.total_bytes, 1))
        self.module.launch(paste_launch(probs, m, meta, offsets, layout, out, fma=self.fma), stream)
        return out

    def __call__(
        self,
        probs: int,
        m: int,
        boxes: np.ndarray | Sequence[Sequence[float]],
        height: int,
        width: int,
        prob_indices: Sequence[int] | None = None,
        stream: Any = None,
    ) -> list[tuple[np.ndarray, int, int]]:
        """(crop, x0, y0) per box, like ``postprocess.paste_mask``'s InstanceMask fields; synchronises."""
        layout = paste_layout(boxes, height, width, m, prob_indices)
        if not len(layout):
            return []
        out_ptr = self.launch_async(probs, m, layout, stream)
        host = download(out_ptr, layout.total_bytes, stream)
        return [layout.crop(host, i) for i in range(len(layout))]

    def close(self) -> None:
        for buf in (self._meta, self._offsets, self._out):
            buf.free()
        self.module.close()
