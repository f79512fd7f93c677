"""A stand-in for ``cuda.bindings.driver`` that runs on the CPU: the simulated GPU's driver.

Test support (see :func:`crystal_rt.testing.simulated_gpu`). It implements the driver calls
crystal-rt makes, with cuda-python's own types and result codes (``CUresult``, ``CUstream``,
``CUdeviceptr``, ... are re-exported from the installed ``cuda.bindings.driver``, which imports
without a driver), and the CUDA driver API's documented rules:

* calls return ``(CUresult, *values)`` tuples; ``cuInit`` comes first (else
  ``CUDA_ERROR_NOT_INITIALIZED``); memory, streams, events, modules and launches need a context
  current *on the calling thread* (else ``CUDA_ERROR_INVALID_CONTEXT``);
* the primary context is reference counted (``cuDevicePrimaryCtxRetain``/``Release``): when the
  count returns to 0 it is destroyed, and a thread on which it is still current gets
  ``CUDA_ERROR_CONTEXT_IS_DESTROYED`` until it is retained again, which makes a new *generation*:
  what was made in the old one (TensorRT objects included) is not usable in the new one;
* device allocations are 256-byte aligned, as ``cuMemAlloc``'s are (TensorRT requires it of tensor
  addresses);
* device memory is host memory with guard bytes after each allocation (a kernel that writes past
  its buffer is reported as ``CUDA_ERROR_ILLEGAL_ADDRESS`` at the next synchronisation, and that
  error is sticky for the context, as on a GPU); copies must stay inside live allocations;
  allocations beyond the simulated memory size fail with ``CUDA_ERROR_OUT_OF_MEMORY``;
* streams are ordered queues that run when something waits for them (``cuStreamSynchronize``,
  ``cuEventSynchronize``/``Query``, ``cuCtxSynchronize``, a copy to pageable memory, ``cuMemFree``):
  host code that reads a result without synchronising reads stale memory, as it would on a GPU;
  asynchronous copies from pageable host memory take their data at the call (staged, as CUDA does),
  copies from page-locked memory (``cuMemHostAlloc``) when they run; kernel parameters are copied at
  ``cuLaunchKernel``;
* ``cuModuleLoadData`` takes the CUBIN or PTX that NVRTC built from crystal-rt's ``kernels/*.cu`` and
  resolves its functions to the emulator build of the same source file; ``cuLaunchKernel`` checks
  that every pointer parameter is 0, device memory or page-locked host memory, then runs the kernel
  in the emulator with the caller's grid, block, shared memory and ``kernelParams``;
* events record the host's wall time when their place in the stream is reached, so
  ``cuEventElapsedTime`` gives the emulated work's wall time (not GPU time).

Not modelled: concurrency between streams (they run one after another when waited for), peer
access, graphs, texture/surface memory, unified memory, more than one device.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._lazy import require
from .emulator.kernels import EmulatedKernel, EmulatedModule, emulated_module, module_for_image

GUARD_BYTES = 256
ALIGNMENT = 256  # cuMemAlloc returns memory aligned for any type, and at least to 256 bytes
_GUARD = bytes((0xA5, 0x5A)) * (GUARD_BYTES // 2)
CU_STREAM_LEGACY = 1
CU_STREAM_PER_THREAD = 2


def _real_driver() -> Any:
    return require("cuda.bindings.driver", "The simulated GPU", package="cuda-python", extra="gpu")


def _ptx_cuda_major(isa_major: int) -> int:
    """The CUDA major whose driver first loads PTX of this ISA major (ISA 8.x: CUDA 12, 9.x: CUDA 13)."""
    return isa_major + 4 if isa_major >= 8 else 11


#: shared memory per block: without opting in (static + dynamic), and the most a kernel may opt in to
#: (cudaDevAttrMaxSharedMemoryPerBlockOptin, by compute capability; CUDA programming guide)
SMEM_DEFAULT_LIMIT = 48 * 1024
SMEM_OPTIN_LIMIT = {
    (7, 5): 64 * 1024,
    (8, 0): 163 * 1024,
    (8, 6): 99 * 1024,
    (8, 7): 163 * 1024,
    (8, 9): 99 * 1024,
    (9, 0): 227 * 1024,
    (10, 0): 227 * 1024,
    (12, 0): 99 * 1024,
}


def static_shared_bytes(image: bytes) -> dict[str, int]:
    """Static shared memory per kernel of a CUBIN (the sizes of its ``.nv.shared.<kernel>`` sections);
    empty for PTX, whose shared variables are not per kernel until the driver compiles it."""
    if image[:4] != b"\x7fELF" or image[4] != 2:  # ELF64 only
        return {}
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", image, shoff + index * shentsize
        )
        return name, offset, size

    names = section(shstrndx)[1]
    found: dict[str, int] = {}
    for index in range(shnum):
        name_at, _, size = section(index)
        start = names + name_at
        name = image[start : image.index(b"\0", start)].decode(errors="replace")
        if name.startswith(".nv.shared."):
            found[name[len(".nv.shared.") :]] = int(size)
    return found


class SimulatedFault(Exception):
    def __init__(self, code: Any, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class _Allocation:
    base: int  # address handed out
    size: int
    buffer: Any  # keeps the host memory alive
    pinned: bool = False

    def contains(self, ptr: int, nbytes: int = 1) -> bool:
        return self.base <= ptr and ptr + max(nbytes, 0) <= self.base + self.size


@dataclass
class _Op:
    run: Callable[[], None]
    what: str
    event: int | None = None  # set for event records


@dataclass
class _Stream:
    handle: int
    flags: int
    queue: deque[_Op] = field(default_factory=deque)


@dataclass
class _Event:
    handle: int
    flags: int
    time: float | None = None  # perf_counter when reached
    pending: bool = False
    stream: int | None = None


@dataclass
class _Function:
    handle: int
    module: EmulatedModule
    kernel: EmulatedKernel
    attributes: dict[int, int] = field(default_factory=dict)
    static_smem: int = 0


@dataclass(frozen=True)
class KernelLaunchRecord:
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    stream: int


class SimulatedDriver:
    """Module-like: ``driver.cuMemAlloc(n)`` etc. One simulated device, ordinal 0."""

    def __init__(
        self,
        *,
        name: str,
        compute_capability: tuple[int, int],
        memory_bytes: int,
        driver_version: int,
        multiprocessors: int = 16,
        integrated: bool = False,
    ) -> None:
        real = _real_driver()
        self._real = real
        # cuda-python's own enums and handle types
        for attr in (
            "CUresult",
            "CUstream",
            "CUevent",
            "CUdeviceptr",
            "CUcontext",
            "CUdevice",
            "CUmodule",
            "CUfunction",
            "CUstream_flags",
            "CUevent_flags",
            "CUdevice_attribute",
            "CUfunction_attribute",
        ):
            setattr(self, attr, getattr(real, attr))
        self.name = name
        self.compute_capability = compute_capability
        self.memory_bytes = memory_bytes
        self.driver_version = driver_version
        self.multiprocessors = multiprocessors
        self.integrated = integrated
        self._lock = threading.RLock()
        self._initialized = False
        self._local = threading.local()
        self._ctx_handle = 0x1C0  # the primary context
        self._ctx_refs = 0
        self._ctx_generation = 0  # +1 each time the primary context is created (retained from 0)
        self._contexts: set[int] = set()  # contexts of their own (cuCtxCreate)
        self._allocs: dict[int, _Allocation] = {}
        self._used = 0
        self._handles = itertools.count(0x1000)
        self._streams: dict[int, _Stream] = {}
        self._events: dict[int, _Event] = {}
        self._modules: dict[int, EmulatedModule] = {}
        self._static_smem: dict[int, dict[str, int]] = {}  # module -> kernel -> static shared bytes
        self._functions: dict[int, _Function] = {}
        self._sticky: Any = None
        self._sticky_message = ""
        self._failures: dict[str, list[Any]] = {}
        self.launches: list[KernelLaunchRecord] = []
        self.messages: deque[str] = deque(maxlen=200)
        S = self.CUresult
        self.OK = S.CUDA_SUCCESS
        # the legacy and per-thread default streams exist without cuStreamCreate
        self._streams[0] = _Stream(0, 0)
        self._streams[CU_STREAM_LEGACY] = _Stream(CU_STREAM_LEGACY, 0)

    # ---- test hooks ---------------------------------------------------------------------------
    def fail_next(self, function: str, code: Any, times: int = 1) -> None:
        """Make the next ``times`` calls of ``function`` return ``code`` (e.g. CUDA_ERROR_OUT_OF_MEMORY)."""
        with self._lock:
            self._failures.setdefault(function, []).extend([code] * times)

    def live_allocations(self) -> dict[int, int]:
        """``{address: bytes}`` of device and page-locked allocations not yet freed."""
        with self._lock:
            return {a.base: a.size for a in self._allocs.values()}

    def live_streams(self) -> list[int]:
        with self._lock:
            return [h for h in self._streams if h not in (0, CU_STREAM_LEGACY)]

    def _note(self, message: str) -> None:
        self.messages.append(message)

    def _injected(self, function: str) -> Any:
        queue = self._failures.get(function)
        if queue:
            return queue.pop(0)
        return None

    # ---- helpers ----------------------------------------------------------------------------------
    def _err(self, code: Any, message: str) -> tuple[Any]:
        self._note(message)
        return (code,)

    def _guard(self, function: str, need_context: bool = True) -> Any:
        """None when the call may go ahead, else the CUresult to return."""
        injected = self._injected(function)
        if injected is not None:
            self._note(f"{function}: injected {getattr(injected, 'name', injected)}")
            return injected
        if not self._initialized:
            return self.CUresult.CUDA_ERROR_NOT_INITIALIZED
        if not need_context:
            return None
        return self._sticky if self._sticky is not None else self._context_problem(function)

    def _context_problem(self, function: str) -> Any:
        """None when a usable context is current on this thread, else the CUresult to return."""
        current = getattr(self._local, "ctx", 0)
        if current in self._contexts:
            return None
        if current != self._ctx_handle:
            self._note(f"{function}: no CUDA context is current on thread {threading.current_thread().name}")
            return self.CUresult.CUDA_ERROR_INVALID_CONTEXT
        if self._ctx_refs == 0:
            self._note(f"{function}: the primary context current on this thread was released and destroyed")
            return self.CUresult.CUDA_ERROR_CONTEXT_IS_DESTROYED
        return None

    def _find(self, ptr: int, nbytes: int) -> _Allocation | None:
        for alloc in self._allocs.values():
            if alloc.contains(ptr, nbytes):
                return alloc
        return None

    def _stream(self, stream: Any) -> _Stream | None:
        handle = int(stream) if stream is not None else 0
        if handle == CU_STREAM_PER_THREAD:
            handle = CU_STREAM_LEGACY
        return self._streams.get(handle if handle else CU_STREAM_LEGACY)

    def _enqueue(self, stream: _Stream, op: _Op) -> None:
        if stream.handle == CU_STREAM_LEGACY:
            # the legacy default stream waits for, and is waited for by, every blocking stream
            self._flush_blocking()
            self._run(op)
        else:
            stream.queue.append(op)

    def _run(self, op: _Op) -> None:
        if self._sticky is not None:
            return
        try:
            op.run()
        except SimulatedFault as fault:
            self._sticky, self._sticky_message = fault.code, str(fault)
            self._note(str(fault))
            return
        self._check_guards(op.what)

    def _flush(self, stream: _Stream, until_event: int | None = None) -> None:
        while stream.queue:
            op = stream.queue.popleft()
            self._run(op)
            if until_event is not None and op.event == until_event:
                return

    def _flush_blocking(self) -> None:
        non_blocking = int(self.CUstream_flags.CU_STREAM_NON_BLOCKING)
        for s in list(self._streams.values()):
            if not s.flags & non_blocking:
                self._flush(s)

    def _flush_all(self) -> None:
        for s in list(self._streams.values()):
            self._flush(s)

    def _check_guards(self, what: str) -> None:
        for alloc in self._allocs.values():
            if alloc.pinned:
                continue
            tail = ctypes.string_at(alloc.base + alloc.size, GUARD_BYTES)
            if tail != _GUARD:
                ctypes.memmove(alloc.base + alloc.size, _GUARD, GUARD_BYTES)
                message = (
                    f"simulated GPU: {what} wrote past the end of the {alloc.size}-byte device buffer at "
                    f"{alloc.base:#x}"
                )
                self._sticky, self._sticky_message = self.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS, message
                self._note(message)
                return

    def _sync_result(self) -> tuple[Any]:
        return (self._sticky,) if self._sticky is not None else (self.OK,)

    # ---- errors, init, versions, devices -------------------------------------------------------------
    def cuGetErrorName(self, error: Any) -> tuple[Any, bytes]:
        return (self.OK, self.CUresult(int(error)).name.encode())

    def cuGetErrorString(self, error: Any) -> tuple[Any, bytes]:
        return (self.OK, self.CUresult(int(error)).name.replace("_", " ").lower().encode())

    def cuInit(self, flags: int) -> tuple[Any]:
        injected = self._injected("cuInit")
        if injected is not None:
            return (injected,)
        self._initialized = True
        return (self.OK,)

    def cuDriverGetVersion(self) -> tuple[Any, int]:
        return (self.OK, self.driver_version)

    def cuDeviceGetCount(self) -> tuple[Any, int]:
        code = self._guard("cuDeviceGetCount", need_context=False)
        return (code, 0) if code is not None else (self.OK, 1)

    def _device(self, ordinal: Any) -> bool:
        return int(ordinal) == 0

    def cuDeviceGet(self, ordinal: int) -> tuple[Any, Any]:
        code = self._guard("cuDeviceGet", need_context=False)
        if code is not None:
            return (code, None)
        if not self._device(ordinal):
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE, None)
        return (self.OK, self.CUdevice(int(ordinal)))

    def cuDeviceGetName(self, length: int, dev: Any) -> tuple[Any, bytes]:
        if not self._device(dev):
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE, b"")
        raw = self.name.encode()[: max(length - 1, 0)]
        return (self.OK, raw + b"\0" * (length - len(raw)))

    def cuDeviceTotalMem(self, dev: Any) -> tuple[Any, int]:
        if not self._device(dev):
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE, 0)
        return (self.OK, self.memory_bytes)

    def cuDeviceGetAttribute(self, attrib: Any, dev: Any) -> tuple[Any, int]:
        if not self._device(dev):
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE, 0)
        a = self.CUdevice_attribute
        values = {
            a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: self.compute_capability[0],
            a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: self.compute_capability[1],
            a.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: self.multiprocessors,
            a.CU_DEVICE_ATTRIBUTE_INTEGRATED: int(self.integrated),
            a.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 99 * 1024,
            a.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024,
            a.CU_DEVICE_ATTRIBUTE_WARP_SIZE: 32,
            a.CU_DEVICE_ATTRIBUTE_CLOCK_RATE: 1_500_000,
            a.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: 1_000_000,
            a.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: 256,
            a.CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: 1,
        }
        key = a(int(attrib))
        if key not in values:
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE, 0)
        return (self.OK, int(values[key]))

    # ---- contexts ----------------------------------------------------------------------------------
    def cuDevicePrimaryCtxRetain(self, dev: Any) -> tuple[Any, Any]:
        code = self._guard("cuDevicePrimaryCtxRetain", need_context=False)
        if code is not None:
            return (code, None)
        if not self._device(dev):
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE, None)
        with self._lock:
            if self._ctx_refs == 0:
                self._ctx_generation += 1
            self._ctx_refs += 1
        return (self.OK, self.CUcontext(self._ctx_handle))

    def cuDevicePrimaryCtxRelease(self, dev: Any) -> tuple[Any]:
        with self._lock:
            if self._ctx_refs == 0:
                return self._err(
                    self.CUresult.CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: not retained"
                )
            self._ctx_refs -= 1
        return (self.OK,)

    def primary_context_refs(self) -> int:
        """How many retains of the primary context are outstanding (0: destroyed or never made)."""
        return self._ctx_refs

    def context_identity(self) -> tuple[int, int]:
        """The context work from this thread goes to, as TensorRT (through the CUDA runtime) sees it:
        the thread's current context, else the primary context, which the runtime makes current
        implicitly (creating it, the next generation, where it was destroyed)."""
        handle = getattr(self._local, "ctx", 0)
        if handle and handle != self._ctx_handle:
            return (handle, 0)  # a context of its own (cuCtxCreate)
        return (self._ctx_handle, self._ctx_generation if self._ctx_refs else self._ctx_generation + 1)

    def cuCtxCreate(self, flags: int, dev: Any) -> tuple[Any, Any]:
        """A context of its own (not the primary one), made current on this thread. Memory, streams and
        modules are not kept apart per context here; only which context is current is."""
        code = self._guard("cuCtxCreate", need_context=False)
        if code is not None:
            return (code, None)
        with self._lock:
            handle = next(self._handles)
            self._contexts.add(handle)
        self._local.ctx = handle
        return (self.OK, self.CUcontext(handle))

    def cuCtxDestroy(self, ctx: Any) -> tuple[Any]:
        with self._lock:
            if int(ctx) not in self._contexts:
                return (self.CUresult.CUDA_ERROR_INVALID_CONTEXT,)
            self._contexts.discard(int(ctx))
        if getattr(self._local, "ctx", 0) == int(ctx):
            self._local.ctx = 0
        return (self.OK,)

    def cuCtxGetCurrent(self) -> tuple[Any, Any]:
        code = self._guard("cuCtxGetCurrent", need_context=False)
        if code is not None:
            return (code, None)
        return (self.OK, self.CUcontext(getattr(self._local, "ctx", 0)))

    def cuCtxSetCurrent(self, ctx: Any) -> tuple[Any]:
        code = self._guard("cuCtxSetCurrent", need_context=False)
        if code is not None:
            return (code,)
        handle = int(ctx) if ctx is not None else 0
        if handle not in (0, self._ctx_handle) and handle not in self._contexts:
            return (self.CUresult.CUDA_ERROR_INVALID_CONTEXT,)
        self._local.ctx = handle
        return (self.OK,)

    def cuCtxSynchronize(self) -> tuple[Any]:
        code = self._guard("cuCtxSynchronize")
        if code is not None:
            return (code,)
        with self._lock:
            self._flush_all()
            return self._sync_result()

    # ---- memory ------------------------------------------------------------------------------------
    def _allocate(self, nbytes: int, pinned: bool) -> _Allocation:
        buffer = ctypes.create_string_buffer(nbytes + GUARD_BYTES + ALIGNMENT)
        start = ctypes.addressof(buffer)
        base = (start + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT  # cuMemAlloc's: at least 256 bytes
        if not pinned:
            ctypes.memset(base, 0xCD, nbytes)  # fresh device memory holds garbage
        ctypes.memmove(base + nbytes, _GUARD, GUARD_BYTES)
        return _Allocation(base, nbytes, buffer, pinned)

    def cuMemGetInfo(self) -> tuple[Any, int, int]:
        code = self._guard("cuMemGetInfo")
        if code is not None:
            return (code, 0, 0)
        return (self.OK, self.memory_bytes - self._used, self.memory_bytes)

    def cuMemAlloc(self, bytesize: int) -> tuple[Any, Any]:
        code = self._guard("cuMemAlloc")
        if code is not None:
            return (code, None)
        nbytes = int(bytesize)
        if nbytes <= 0:
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE, None)
        with self._lock:
            if self._used + nbytes > self.memory_bytes:
                self._note(
                    f"cuMemAlloc({nbytes}): out of memory ({self.memory_bytes - self._used} bytes free)"
                )
                return (self.CUresult.CUDA_ERROR_OUT_OF_MEMORY, None)
            alloc = self._allocate(nbytes, pinned=False)
            self._allocs[alloc.base] = alloc
            self._used += nbytes
        return (self.OK, self.CUdeviceptr(alloc.base))

    def cuMemFree(self, dptr: Any) -> tuple[Any]:
        code = self._guard("cuMemFree")
        if code is not None:
            return (code,)
        with self._lock:
            self._flush_all()  # cuMemFree waits for the work that may use the memory
            alloc = self._allocs.get(int(dptr))
            if alloc is None or alloc.pinned:
                return self._err(
                    self.CUresult.CUDA_ERROR_INVALID_VALUE, f"cuMemFree({int(dptr):#x}): not allocated"
                )
            del self._allocs[alloc.base]
            self._used -= alloc.size
            return self._sync_result()

    def cuMemHostAlloc(self, bytesize: int, flags: int) -> tuple[Any, int]:
        code = self._guard("cuMemHostAlloc")
        if code is not None:
            return (code, 0)
        nbytes = int(bytesize)
        if nbytes <= 0:
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE, 0)
        with self._lock:
            alloc = self._allocate(nbytes, pinned=True)
            self._allocs[alloc.base] = alloc
        return (self.OK, alloc.base)

    def cuMemFreeHost(self, p: Any) -> tuple[Any]:
        code = self._guard("cuMemFreeHost")
        if code is not None:
            return (code,)
        with self._lock:
            self._flush_all()
            alloc = self._allocs.get(int(p))
            if alloc is None or not alloc.pinned:
                return self._err(
                    self.CUresult.CUDA_ERROR_INVALID_VALUE, f"cuMemFreeHost({int(p):#x}): not allocated"
                )
            del self._allocs[alloc.base]
        return (self.OK,)

    @staticmethod
    def _host_address(obj: Any) -> tuple[int, Any]:
        """(address, keep-alive) of a host pointer argument: an int or a buffer-protocol object."""
        if isinstance(obj, int):
            return obj, None
        if hasattr(obj, "__int__") and not isinstance(obj, np.ndarray | bytes | bytearray | memoryview):
            return int(obj), None
        array = np.frombuffer(obj, dtype=np.uint8) if not isinstance(obj, np.ndarray) else obj
        return int(array.ctypes.data), array

    def _device_range(self, function: str, ptr: int, nbytes: int) -> Any:
        alloc = self._find(ptr, nbytes)
        if alloc is None or alloc.pinned:
            self._note(f"{function}: {nbytes} bytes at {ptr:#x} are not inside one device allocation")
            return self.CUresult.CUDA_ERROR_INVALID_VALUE
        return None

    def cuMemcpyHtoDAsync(self, dstDevice: Any, srcHost: Any, ByteCount: int, hStream: Any) -> tuple[Any]:
        return self._copy_to_device("cuMemcpyHtoDAsync", dstDevice, srcHost, ByteCount, hStream)

    def cuMemcpyHtoD(self, dstDevice: Any, srcHost: Any, ByteCount: int) -> tuple[Any]:
        return self._copy_to_device("cuMemcpyHtoD", dstDevice, srcHost, ByteCount, None, sync=True)

    def _copy_to_device(
        self, function: str, dst: Any, src: Any, count: int, stream: Any, sync: bool = False
    ) -> tuple[Any]:
        code = self._guard(function)
        if code is not None:
            return (code,)
        nbytes, dptr = int(count), int(dst)
        src_ptr, keep = self._host_address(src)
        with self._lock:
            bad = self._device_range(function, dptr, nbytes)
            if bad is not None:
                return (bad,)
            target = self._stream(stream)
            if target is None:
                return self._err(self.CUresult.CUDA_ERROR_INVALID_HANDLE, f"{function}: unknown stream")
            source = self._find(src_ptr, nbytes)
            if source is not None and source.pinned and not sync:

                def run() -> None:
                    ctypes.memmove(dptr, src_ptr, nbytes)

            else:  # pageable memory is staged at the call, as CUDA does
                staged = ctypes.string_at(src_ptr, nbytes)

                def run() -> None:
                    ctypes.memmove(dptr, staged, nbytes)

            del keep
            self._enqueue(target, _Op(run, function))
            if sync:
                self._flush(target)
            return self._sync_result() if sync else (self.OK,)

    def cuMemcpyDtoHAsync(self, dstHost: Any, srcDevice: Any, ByteCount: int, hStream: Any) -> tuple[Any]:
        return self._copy_to_host("cuMemcpyDtoHAsync", dstHost, srcDevice, ByteCount, hStream)

    def cuMemcpyDtoH(self, dstHost: Any, srcDevice: Any, ByteCount: int) -> tuple[Any]:
        return self._copy_to_host("cuMemcpyDtoH", dstHost, srcDevice, ByteCount, None, sync=True)

    def _copy_to_host(
        self, function: str, dst: Any, src: Any, count: int, stream: Any, sync: bool = False
    ) -> tuple[Any]:
        code = self._guard(function)
        if code is not None:
            return (code,)
        nbytes, sptr = int(count), int(src)
        dst_ptr, keep = self._host_address(dst)
        with self._lock:
            bad = self._device_range(function, sptr, nbytes)
            if bad is not None:
                return (bad,)
            target = self._stream(stream)
            if target is None:
                return self._err(self.CUresult.CUDA_ERROR_INVALID_HANDLE, f"{function}: unknown stream")

            def run() -> None:
                ctypes.memmove(dst_ptr, sptr, nbytes)

            self._enqueue(target, _Op(run, function))
            destination = self._find(dst_ptr, nbytes)
            if sync or destination is None or not destination.pinned:
                # to pageable memory the call returns once the copy is done
                self._flush(target)
                del keep
                return self._sync_result()
            return (self.OK,)

    def cuMemcpyDtoDAsync(self, dstDevice: Any, srcDevice: Any, ByteCount: int, hStream: Any) -> tuple[Any]:
        code = self._guard("cuMemcpyDtoDAsync")
        if code is not None:
            return (code,)
        nbytes, dptr, sptr = int(ByteCount), int(dstDevice), int(srcDevice)
        with self._lock:
            for ptr in (dptr, sptr):
                bad = self._device_range("cuMemcpyDtoDAsync", ptr, nbytes)
                if bad is not None:
                    return (bad,)
            target = self._stream(hStream)
            if target is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)

            def run() -> None:
                ctypes.memmove(dptr, sptr, nbytes)

            self._enqueue(target, _Op(run, "cuMemcpyDtoDAsync"))
        return (self.OK,)

    def cuMemsetD8Async(self, dstDevice: Any, uc: int, N: int, hStream: Any) -> tuple[Any]:
        code = self._guard("cuMemsetD8Async")
        if code is not None:
            return (code,)
        nbytes, dptr, value = int(N), int(dstDevice), int(uc) & 0xFF
        with self._lock:
            bad = self._device_range("cuMemsetD8Async", dptr, nbytes)
            if bad is not None:
                return (bad,)
            target = self._stream(hStream)
            if target is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)

            def run() -> None:
                ctypes.memset(dptr, value, nbytes)

            self._enqueue(target, _Op(run, "cuMemsetD8Async"))
        return (self.OK,)

    # ---- streams and events ----------------------------------------------------------------------
    def cuStreamCreate(self, Flags: int) -> tuple[Any, Any]:
        code = self._guard("cuStreamCreate")
        if code is not None:
            return (code, None)
        with self._lock:
            handle = next(self._handles)
            self._streams[handle] = _Stream(handle, int(Flags))
        return (self.OK, self.CUstream(handle))

    def cuStreamDestroy(self, hStream: Any) -> tuple[Any]:
        code = self._guard("cuStreamDestroy")
        if code is not None:
            return (code,)
        with self._lock:
            stream = self._streams.get(int(hStream))
            if stream is None or stream.handle in (0, CU_STREAM_LEGACY):
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            self._flush(stream)  # queued work still completes
            del self._streams[stream.handle]
        return (self.OK,)

    def cuStreamSynchronize(self, hStream: Any) -> tuple[Any]:
        code = self._guard("cuStreamSynchronize")
        if code is not None:
            return (code,)
        with self._lock:
            stream = self._stream(hStream)
            if stream is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            if stream.handle == CU_STREAM_LEGACY:
                self._flush_blocking()
            self._flush(stream)
            return self._sync_result()

    def cuStreamQuery(self, hStream: Any) -> tuple[Any]:
        return self.cuStreamSynchronize(hStream)  # queued work runs when anyone asks about it

    def cuEventCreate(self, Flags: int) -> tuple[Any, Any]:
        code = self._guard("cuEventCreate")
        if code is not None:
            return (code, None)
        with self._lock:
            handle = next(self._handles)
            self._events[handle] = _Event(handle, int(Flags))
        return (self.OK, self.CUevent(handle))

    def cuEventDestroy(self, hEvent: Any) -> tuple[Any]:
        with self._lock:
            if self._events.pop(int(hEvent), None) is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
        return (self.OK,)

    def cuEventRecord(self, hEvent: Any, hStream: Any) -> tuple[Any]:
        code = self._guard("cuEventRecord")
        if code is not None:
            return (code,)
        with self._lock:
            event = self._events.get(int(hEvent))
            stream = self._stream(hStream)
            if event is None or stream is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            event.pending, event.time, event.stream = True, None, stream.handle

            def run() -> None:
                event.time = time.perf_counter()
                event.pending = False

            self._enqueue(stream, _Op(run, "cuEventRecord", event=event.handle))
        return (self.OK,)

    def cuEventSynchronize(self, hEvent: Any) -> tuple[Any]:
        code = self._guard("cuEventSynchronize")
        if code is not None:
            return (code,)
        with self._lock:
            event = self._events.get(int(hEvent))
            if event is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            if event.pending and event.stream in self._streams:
                self._flush(self._streams[event.stream], until_event=event.handle)
            return self._sync_result()

    def cuEventQuery(self, hEvent: Any) -> tuple[Any]:
        return self.cuEventSynchronize(hEvent)

    def cuEventElapsedTime(self, hStart: Any, hEnd: Any) -> tuple[Any, float]:
        code = self._guard("cuEventElapsedTime")
        if code is not None:
            return (code, 0.0)
        with self._lock:
            start, end = self._events.get(int(hStart)), self._events.get(int(hEnd))
            if start is None or end is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE, 0.0)
            disable = int(self.CUevent_flags.CU_EVENT_DISABLE_TIMING)
            if (start.flags | end.flags) & disable:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE, 0.0)
            if start.pending or end.pending:
                return (self.CUresult.CUDA_ERROR_NOT_READY, 0.0)
            if start.time is None or end.time is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE, 0.0)
            return (self.OK, float((end.time - start.time) * 1e3))

    def cuStreamWaitEvent(self, hStream: Any, hEvent: Any, Flags: int) -> tuple[Any]:
        code = self._guard("cuStreamWaitEvent")
        if code is not None:
            return (code,)
        with self._lock:
            stream, event = self._stream(hStream), self._events.get(int(hEvent))
            if stream is None or event is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            source = event.stream

            def run() -> None:
                if source is not None and source in self._streams and event.pending:
                    self._flush(self._streams[source], until_event=event.handle)

            self._enqueue(stream, _Op(run, "cuStreamWaitEvent"))
        return (self.OK,)

    # ---- modules and launches ----------------------------------------------------------------------
    def cuModuleLoadData(self, image: Any) -> tuple[Any, Any]:
        code = self._guard("cuModuleLoadData")
        if code is not None:
            return (code, None)
        data = bytes(image)
        if not (data[:4] == b"\x7fELF" or b".entry" in data):
            return self._err(
                self.CUresult.CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: not a CUBIN or PTX image"
            )[0], None
        ptx_version = re.search(rb"^\s*\.version\s+(\d+)\.(\d+)", data, re.MULTILINE)
        if (
            ptx_version is not None
            and _ptx_cuda_major(int(ptx_version.group(1))) > self.driver_version // 1000
        ):
            isa = f"{ptx_version.group(1).decode()}.{ptx_version.group(2).decode()}"
            self._note(f"cuModuleLoadData: PTX ISA {isa} needs a driver newer than {self.driver_version}")
            return (self.CUresult.CUDA_ERROR_UNSUPPORTED_PTX_VERSION, None)
        name = module_for_image(data)
        if name is None:
            self._note("cuModuleLoadData: the image is not one of crystal-rt's kernel files")
            return (self.CUresult.CUDA_ERROR_INVALID_IMAGE, None)
        module = emulated_module(name)
        with self._lock:
            handle = next(self._handles)
            self._modules[handle] = module
            self._static_smem[handle] = static_shared_bytes(data)
        return (self.OK, self.CUmodule(handle))

    def cuModuleUnload(self, hmod: Any) -> tuple[Any]:
        with self._lock:
            if self._modules.pop(int(hmod), None) is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
        return (self.OK,)

    def cuModuleGetFunction(self, hmod: Any, name: Any) -> tuple[Any, Any]:
        code = self._guard("cuModuleGetFunction")
        if code is not None:
            return (code, None)
        if not isinstance(name, bytes):
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE, None)
        with self._lock:
            module = self._modules.get(int(hmod))
            if module is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE, None)
            kernel = module.kernels.get(name.decode())
            if kernel is None:
                return (self.CUresult.CUDA_ERROR_NOT_FOUND, None)
            handle = next(self._handles)
            static = self._static_smem.get(int(hmod), {}).get(kernel.name, 0)
            self._functions[handle] = _Function(handle, module, kernel, static_smem=static)
        return (self.OK, self.CUfunction(handle))

    def _optin_limit(self) -> int:
        return SMEM_OPTIN_LIMIT.get(self.compute_capability, 99 * 1024)

    def cuFuncSetAttribute(self, hfunc: Any, attrib: Any, value: int) -> tuple[Any]:
        with self._lock:
            func = self._functions.get(int(hfunc))
            if func is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            dynamic = int(self.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
            if int(attrib) == dynamic and int(value) + func.static_smem > self._optin_limit():
                return self._err(
                    self.CUresult.CUDA_ERROR_INVALID_VALUE,
                    f"{func.kernel.name}: {value} + {func.static_smem} static bytes of shared memory, more "
                    f"than the {self._optin_limit()} compute {self.compute_capability} allows a block",
                )
            func.attributes[int(attrib)] = int(value)
        return (self.OK,)

    def cuFuncGetAttribute(self, attrib: Any, hfunc: Any) -> tuple[Any, int]:
        with self._lock:
            func = self._functions.get(int(hfunc))
            if func is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE, 0)
            attrs = self.CUfunction_attribute
            if int(attrib) == int(attrs.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES):
                return (self.OK, func.static_smem)
            if int(attrib) == int(attrs.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES):
                default = SMEM_DEFAULT_LIMIT - func.static_smem
                return (self.OK, func.attributes.get(int(attrib), default))
            if int(attrib) == int(attrs.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK):
                return (self.OK, 1024)
        return (self.CUresult.CUDA_ERROR_INVALID_VALUE, 0)

    def cuLaunchKernel(
        self,
        f: Any,
        gridDimX: int,
        gridDimY: int,
        gridDimZ: int,
        blockDimX: int,
        blockDimY: int,
        blockDimZ: int,
        sharedMemBytes: int,
        hStream: Any,
        kernelParams: Any,
        extra: Any,
    ) -> tuple[Any]:
        code = self._guard("cuLaunchKernel")
        if code is not None:
            return (code,)
        with self._lock:
            func = self._functions.get(int(f))
            stream = self._stream(hStream)
            if func is None or stream is None:
                return (self.CUresult.CUDA_ERROR_INVALID_HANDLE,)
            grid = (int(gridDimX), int(gridDimY), int(gridDimZ))
            block = (int(blockDimX), int(blockDimY), int(blockDimZ))
            smem = int(sharedMemBytes)
            problem = self._launch_problem(func, grid, block, smem, kernelParams, extra)
            if problem is not None:
                return self._err(*problem)
            # copy the parameters now, as the driver does, and check the pointers among them
            sizes = func.kernel.param_bytes
            pointers = (ctypes.c_void_p * len(sizes)).from_address(kernelParams)
            storage = [
                ctypes.create_string_buffer(ctypes.string_at(pointers[i] or 0, n), n)
                for i, n in enumerate(sizes)
            ]
            packed = (ctypes.c_void_p * len(sizes))(*(ctypes.addressof(s) for s in storage))
            name = func.kernel.name
            for i, kind in enumerate(func.kernel.kinds):
                value = ctypes.c_void_p.from_buffer(storage[i]).value if kind == "p" else None
                if value and self._find(value, 1) is None:
                    return self._err(
                        self.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,
                        f"{name}: parameter {i} ({value:#x}) is neither device nor page-locked host memory",
                    )
            self.launches.append(KernelLaunchRecord(name, grid, block, smem, stream.handle))
            module, kernel = func.module, func.kernel

            def run() -> None:
                keep = (storage, packed)
                error = module.launch(kernel, grid, block, smem, ctypes.addressof(packed))
                del keep
                if error is not None:
                    raise SimulatedFault(self.CUresult.CUDA_ERROR_LAUNCH_FAILED, f"{name}: {error}")

            self._enqueue(stream, _Op(run, f"kernel {name}"))
        return (self.OK,)

    def _launch_problem(
        self,
        func: _Function,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        smem: int,
        params: Any,
        extra: Any,
    ) -> tuple[Any, str] | None:
        """(CUresult, message) for a launch the driver refuses, else None."""
        name = func.kernel.name
        invalid = self.CUresult.CUDA_ERROR_INVALID_VALUE
        if min(grid) < 1 or min(block) < 1 or block[0] * block[1] * block[2] > 1024:
            return invalid, f"{name}: bad launch {grid} x {block}"
        if grid[0] >= 2**31 or max(grid[1:]) > 65535 or block[2] > 64:
            return invalid, f"{name}: grid {grid} exceeds the limits"
        static = func.static_smem
        limit = func.attributes.get(
            int(self.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES),
            SMEM_DEFAULT_LIMIT - static,  # without opting in, static + dynamic <= 48 KiB
        )
        if smem > limit or static + smem > self._optin_limit():
            return invalid, (
                f"{name}: {smem} bytes of dynamic shared memory (+ {static} static), more than the {limit} "
                "allowed (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES opts in up to "
                f"{self._optin_limit() - static})"
            )
        if extra not in (0, None) or not isinstance(params, int) or not params:
            return invalid, f"{name}: the simulated driver takes kernelParams as the address of a void* array"
        return None

    # ---- for the simulated TensorRT ---------------------------------------------------------------------
    def enqueue_host_work(self, stream: int, what: str, work: Callable[[], None]) -> Any:
        """Queue ``work`` (host code standing in for device work) on ``stream``; a CUresult."""
        with self._lock:
            target = self._stream(stream)
            if target is None:
                return self.CUresult.CUDA_ERROR_INVALID_HANDLE

            def run() -> None:
                try:
                    work()
                except SimulatedFault:
                    raise
                except Exception as exc:  # the stand-in's own failure becomes a launch failure
                    raise SimulatedFault(self.CUresult.CUDA_ERROR_LAUNCH_FAILED, f"{what}: {exc}") from exc

            self._enqueue(target, _Op(run, what))
            return self.OK

    def device_view(self, ptr: int, nbytes: int) -> np.ndarray | None:
        """A uint8 view of ``nbytes`` of device memory at ``ptr`` (None outside a device allocation)."""
        with self._lock:
            alloc = self._find(int(ptr), int(nbytes))
            if alloc is None or alloc.pinned:
                return None
        return np.ctypeslib.as_array((ctypes.c_uint8 * int(nbytes)).from_address(int(ptr)))

    def context_current(self) -> bool:
        return getattr(self._local, "ctx", 0) == self._ctx_handle

    def __getattr__(self, name: str) -> Any:
        if name.startswith("cu"):
            raise AttributeError(f"the simulated CUDA driver does not implement {name}")
        return getattr(self._real, name)
