"""The CUDA driver (cuda-python's ``cuda.bindings.driver``, imported lazily through the
``binding`` seam): results checked into :class:`~crystal_rt.errors.CudaError`, the current context,
stream handles from any library, synchronisation."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ..errors import BackendUnavailable, CrystalRtError, CudaError
from .binding import driver as binding_driver
from .probe import probe


def driver() -> ModuleType:
    """The driver module (MissingDependency naming the install when cuda-python is absent)."""

    return binding_driver("Running the CUDA kernels")


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(CUresult, *values)`` tuple, raising CudaError on failure."""
    drv = driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        code = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"{what} failed: {code}", code=code)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass
class _Primary:
    """The primary contexts this process retained through one driver module (the real one, or a
    simulated GPU's): one retain per device per process (not per thread), released when the last
    holder (a device backend) closes; ``ours`` remembers handles once retained, to recognise a
    thread whose current context is a primary context released since."""

    retained: dict[int, Any] = field(default_factory=dict)
    holders: dict[int, int] = field(default_factory=dict)
    ours: set[int] = field(default_factory=set)


_LOCK = threading.Lock()
_PRIMARY: weakref.WeakKeyDictionary[Any, _Primary] = weakref.WeakKeyDictionary()


def _primary(drv: Any) -> _Primary:
    with _LOCK:
        return _PRIMARY.setdefault(drv, _Primary())


def ensure_context(device: int = 0) -> Any:
    """Make a context current: the calling thread's current one, else the device's primary context
    (the one the CUDA runtime, torch and CuPy use), retained once per process."""

    drv = driver()
    state = probe()
    if not state.usable:
        raise BackendUnavailable(state.message)
    ctx = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    handle = int(ctx) if ctx is not None else 0
    primary = _primary(drv)
    with _LOCK:
        stale = handle in primary.ours and device not in primary.retained  # ours, released since
        if handle and not stale:
            return ctx
        if device not in primary.retained:
            dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
            primary.retained[device] = check(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            primary.ours.add(int(primary.retained[device]))
        ctx = primary.retained[device]
    check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return ctx


def hold_context(device: int = 0) -> Any:
    """:func:`ensure_context` for an owner that will :func:`release_context` when it closes."""
    ctx = ensure_context(device)
    primary = _primary(driver())
    with _LOCK:
        primary.holders[device] = primary.holders.get(device, 0) + 1
    return ctx


def release_context(device: int = 0) -> None:
    """One holder fewer; the last releases the process's retain of the primary context (whose memory,
    modules and streams the holders freed first), so a closed Detector leaves nothing on the GPU."""
    drv = driver()
    primary = _primary(drv)
    with _LOCK:
        left = primary.holders.get(device, 0) - 1
        if left > 0:
            primary.holders[device] = left
            return
        primary.holders.pop(device, None)
        ctx = primary.retained.pop(device, None)
    if ctx is None:
        return
    current = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if current is not None and int(current) == int(ctx):
        check(drv.cuCtxSetCurrent(drv.CUcontext(0)), "cuCtxSetCurrent")
    dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
    check(drv.cuDevicePrimaryCtxRelease(dev), "cuDevicePrimaryCtxRelease")


def synchronize(stream: Any = None) -> None:
    drv = driver()
    check(drv.cuStreamSynchronize(drv.CUstream(as_stream(stream))), "cuStreamSynchronize")


def as_stream(obj: Any) -> int:
    """The raw ``CUstream`` handle of ``obj`` (0, the legacy default stream, for None).

    Accepts a cuda-python ``CUstream``, an int handle, PyCUDA streams (``.handle``), CuPy streams
    (``.ptr``), torch streams (``.cuda_stream``), cuda.core streams and anything implementing the
    ``__cuda_stream__`` protocol.
    """
    if obj is None:
        return 0
    if isinstance(obj, bool):
        raise TypeError("a bool is not a CUDA stream")
    if isinstance(obj, int):
        return obj
    proto = getattr(obj, "__cuda_stream__", None)
    if proto is not None:
        value = proto() if callable(proto) else proto
        return int(value[1])
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(obj, attr, None)
        if value is not None:
            return as_stream(value) if not isinstance(value, int) else value
    try:
        return int(obj)  # cuda-python CUstream / cudaStream_t implement __int__
    except (TypeError, ValueError):
        pass
    raise TypeError(f"cannot use a {type(obj).__name__} as a CUDA stream")


def integrated_gpu(device: int = 0) -> bool:
    """Whether the GPU shares the system's memory (a Jetson): CU_DEVICE_ATTRIBUTE_INTEGRATED; False
    where it cannot be asked."""
    try:
        cu = driver()
        dev = check(cu.cuDeviceGet(device), "cuDeviceGet")
        attr = cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_INTEGRATED
        return bool(check(cu.cuDeviceGetAttribute(attr, dev), "cuDeviceGetAttribute"))
    except CrystalRtError:
        return False
