"""The pipeline's device stages on one CUDA stream: upload, CLAHE, letterbox + normalise, mask paste.

:class:`CudaStages` is what a device backend (TensorRT) composes with its engine into the
runtime's ``DeviceSession``. The raw image goes through a page-locked staging buffer to the device
once; each stage is bracketed by CUDA events (``timer``); nothing is synchronised except where
results come back (``paste``). One instance per stream and thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import InputMap
from ..spec import PreprocessSpec

if TYPE_CHECKING:
    from ..geometry import Window
from .driver import as_stream, check, synchronize
from .driver import driver as cuda_driver
from .launches import paste_layout
from .memory import DeviceBuffer, PinnedBuffer
from .preprocessor import GpuMaskPaster, GpuPreprocessor
from .timing import EventTimer

Box = tuple[float, float, float, float]


class CudaStages:
    def __init__(self, device: int, stream: Any) -> None:
        self.device = device
        self.stream = stream
        self.timer = EventTimer(stream)
        self._pre: GpuPreprocessor | None = None
        self._paster: GpuMaskPaster | None = None
        self._raw = DeviceBuffer()
        self._staging = PinnedBuffer()
        self._crops = PinnedBuffer()
        self._image: tuple[int, int, int, int, np.dtype[Any], int] | None = None  # ptr, pitch, h, w, dtype, c

    @staticmethod
    def can_clahe(pixels: np.ndarray) -> bool:
        return GpuPreprocessor.has_clahe(pixels.dtype, 1 if pixels.ndim == 2 else 3)

    def _preprocessor(self, spec: PreprocessSpec) -> GpuPreprocessor:
        if self._pre is None or self._pre.spec != spec:
            if self._pre is not None:
                self._pre.close()
            self._pre = GpuPreprocessor(spec, self.device)
        return self._pre

    def _upload(self, pixels: np.ndarray) -> tuple[int, int, int, int, np.dtype[Any], int]:
        """Queue the copy of ``pixels`` to the device (through page-locked memory): the device image."""
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else 3
        staged = self._staging.view(pixels.shape, pixels.dtype)
        np.copyto(staged, pixels)  # the previous image's copy finished: every call ends synchronised
        pitch = width * channels * pixels.dtype.itemsize
        ptr = self._raw.reserve(staged.nbytes)
        driver = cuda_driver()
        check(
            driver.cuMemcpyHtoDAsync(
                ptr, self._staging.ptr, staged.nbytes, driver.CUstream(as_stream(self.stream))
            ),
            "cuMemcpyHtoDAsync",
        )
        return ptr, pitch, height, width, pixels.dtype, channels

    def clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> None:
        """Upload ``pixels`` and queue CLAHE on them; the result stays on the device for ``letterbox``.
        The kernels are compiled and loaded (first image on a thread) before the timed region opens."""
        pre = self._preprocessor(spec)
        self.timer.start("clahe")
        ptr, pitch, height, width, dtype, channels = self._upload(pixels)
        out, out_pitch = pre.clahe_async(ptr, pitch, height, width, dtype, channels, self.stream)
        self._image = (out, out_pitch, height, width, dtype, channels)
        self.timer.stop()

    def forget_image(self) -> None:
        """A new image begins: the device image of the last one is not to be reused."""
        self._image = None

    def letterbox(
        self, pixels: np.ndarray | None, spec: PreprocessSpec, out: int, window: Window | None = None
    ) -> InputMap:
        """Queue letterbox (or stretch) + normalise into ``out`` (float32 [1, 3, H, W]) of ``pixels``
        (uploaded first, and kept on the device for further windows) or of the image already there
        (``clahe``'s, or the last upload); of its ``window`` only when given (tiles: the window is a
        pointer offset into the image with the image's pitch). Returns the map back to the window."""
        pre = self._preprocessor(spec)  # NVRTC and module load before the timed region
        self.timer.start("letterbox")
        if pixels is not None:
            self._image = self._upload(pixels)
        if self._image is None:
            raise ValueError("letterbox without an image: call clahe() or pass the pixels")
        ptr, pitch, height, width, dtype, channels = self._image
        if window is not None:
            ptr += window.y * pitch + window.x * channels * np.dtype(dtype).itemsize
            height, width = window.h, window.w
        mapping = pre.letterbox_async(ptr, pitch, height, width, dtype, channels, out, self.stream)
        self.timer.stop()
        return mapping

    def upload_input(self, tensor: np.ndarray, out: int) -> None:
        """Queue the copy of an engine input the CPU made (a recipe the kernels do not compute) into
        ``out``, through page-locked memory (timed as ``upload``)."""
        self.timer.start("upload")
        staged = self._staging.view(tensor.shape, tensor.dtype)
        np.copyto(staged, tensor)
        driver = cuda_driver()
        check(
            driver.cuMemcpyHtoDAsync(
                out, self._staging.ptr, staged.nbytes, driver.CUstream(as_stream(self.stream))
            ),
            "cuMemcpyHtoDAsync",
        )
        self.timer.stop()

    def paste(
        self, probs: int, m: int, boxes: Sequence[Box], indices: Sequence[int], height: int, width: int
    ) -> list[tuple[np.ndarray, int, int]]:
        """Paste the M x M maps ``indices`` of the device array ``probs`` into ``boxes`` (image pixels):
        (crop, x0, y0) per box, on the host (synchronises the stream)."""
        if self._paster is None:
            self._paster = GpuMaskPaster(self.device)
        layout = paste_layout(boxes, height, width, m, indices)
        self.timer.start("paste")
        crops: list[tuple[np.ndarray, int, int]] = []
        if len(layout):
            out = self._paster.launch_async(probs, m, layout, self.stream)
            host = self._crops.view((max(layout.total_bytes, 1),), np.uint8)
            if layout.total_bytes:
                driver = cuda_driver()
                stream = driver.CUstream(as_stream(self.stream))
                check(
                    driver.cuMemcpyDtoHAsync(self._crops.ptr, out, layout.total_bytes, stream),
                    "cuMemcpyDtoHAsync",
                )
        self.timer.stop()
        synchronize(self.stream)
        if len(layout):
            crops = [layout.crop(host, i) for i in range(len(layout))]
        return crops

    def close(self) -> None:
        for closer in (self._pre, self._paster):
            if closer is not None:
                closer.close()
        self._pre = self._paster = None
        for buf in (self._raw, self._staging, self._crops):
            buf.free()
        self.timer.close()
