"""The CUDA driver (cuda-python's ``cuda.bindings.driver``, imported lazily through the
``binding`` seam): results checked into :class:`~crystal_rt.errors.CudaError`, the current context,
stream handles from any library, synchronisation."""

from __future__ import annotations

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


def ensure_context(device: int = 0) -> Any:
    """Make a context current: the calling thread's current one, else the device's primary context
    (the one the CUDA runtime, torch and CuPy use)."""

    drv = driver()
    state = probe()
    if not state.usable:
        raise BackendUnavailable(state.message)
    ctx = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if ctx is not None and int(ctx) != 0:
        return ctx
    dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
    ctx = check(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
    check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return ctx


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
