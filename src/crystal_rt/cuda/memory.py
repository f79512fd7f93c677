"""Device and page-locked host buffers that grow as needed (both context managers), and copies back
to the host; out-of-memory failures are one sentence with the free memory."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..errors import CudaError
from .driver import as_stream, check, driver


class DeviceBuffer:
    """Device memory that grows on demand (cuMemAlloc); ``ptr`` is the raw address."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        if nbytes:
            self.reserve(nbytes)

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            try:
                self.ptr = int(check(driver().cuMemAlloc(max(nbytes, 1)), f"cuMemAlloc({nbytes})"))
            except CudaError as exc:
                raise _out_of_memory(exc, nbytes, "GPU") from exc
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            driver().cuMemFree(self.ptr)
            self.ptr = 0
            self.nbytes = 0

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def upload(self, array: np.ndarray, stream: Any = None) -> int:
        data = np.ascontiguousarray(array)
        self.reserve(data.nbytes)
        if data.nbytes:
            drv = driver()
            check(
                drv.cuMemcpyHtoDAsync(
                    self.ptr, data.ctypes.data, data.nbytes, drv.CUstream(as_stream(stream))
                ),
                "cuMemcpyHtoDAsync",
            )
        return self.ptr


class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc) that grows on demand; ``view`` gives numpy arrays on it.

    Asynchronous copies from or to it really are asynchronous: do not touch it until the stream that
    copies it has been synchronised."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        self._raw: np.ndarray | None = None
        if nbytes:
            self.reserve(nbytes)

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            size = max(int(nbytes), 1)
            try:
                self.ptr = int(check(driver().cuMemHostAlloc(size, 0), f"cuMemHostAlloc({size})"))
            except CudaError as exc:
                raise _out_of_memory(exc, size, "page-locked host") from exc
            self.nbytes = size
            self._raw = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.ptr))
        return self.ptr

    def view(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` on the buffer's first bytes (grows it if needed)."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        self.reserve(nbytes)
        assert self._raw is not None
        view: np.ndarray = self._raw[:nbytes].view(dt).reshape(shape)
        return view

    def free(self) -> None:
        if self.ptr:
            driver().cuMemFreeHost(self.ptr)
            self.ptr = 0
            self.nbytes = 0
            self._raw = None

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def _out_of_memory(exc: CudaError, nbytes: int, where: str) -> CudaError:
    """An out-of-memory error naming what was asked for and what is free."""
    if exc.code != "CUDA_ERROR_OUT_OF_MEMORY":
        return exc
    free = ""
    try:
        free_b, total_b = check(driver().cuMemGetInfo(), "cuMemGetInfo")
        free = f"; {int(free_b) / 2**20:.1f} MiB of {int(total_b) / 2**20:.0f} MiB are free"
    except CudaError:
        pass
    return CudaError(
        f"out of {where} memory: asked for {nbytes / 2**20:.1f} MiB{free} (close other GPU programs, or use "
        "smaller images / a smaller engine)",
        code=exc.code,
    )


def download(ptr: int, nbytes: int, stream: Any = None) -> np.ndarray:
    """Copy ``nbytes`` from the device into a new uint8 array (synchronises ``stream``)."""
    out = np.empty(nbytes, dtype=np.uint8)
    if nbytes:
        drv = driver()
        stream_obj = drv.CUstream(as_stream(stream))
        check(drv.cuMemcpyDtoHAsync(out.ctypes.data, ptr, nbytes, stream_obj), "cuMemcpyDtoHAsync")
        check(drv.cuStreamSynchronize(stream_obj), "cuStreamSynchronize")
    return out
