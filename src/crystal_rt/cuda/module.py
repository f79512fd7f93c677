"""Compiled kernel files loaded into the current context (``Module``), and kernel launches on a stream."""

from __future__ import annotations

import ctypes
from typing import Any

from ..errors import BackendUnavailable, CudaError
from .build import compile_kernel, device_arch, nvrtc_version, target_for
from .driver import as_stream, check, driver, ensure_context, integrated_gpu
from .launches import KernelLaunch
from .probe import nvrtc_mismatch, probe


class Module:
    """A compiled kernel file loaded into the current context."""

    def __init__(self, name: str, device: int = 0, arch: str | None = None) -> None:
        self.context = ensure_context(device)
        target = target_for(arch if arch is not None else device_arch(device))
        mismatch = nvrtc_mismatch(
            probe().driver_cuda,
            nvrtc_version(),
            ptx=target.startswith("compute_"),
            integrated=integrated_gpu(device),
        )
        if mismatch is not None:
            raise BackendUnavailable(mismatch)
        self.compiled = compile_kernel(name, target, device=device)
        drv = driver()
        image = self.compiled.image
        if self.compiled.is_ptx and not image.endswith(b"\0"):
            image += b"\0"
        try:
            self.handle = check(drv.cuModuleLoadData(image), f"loading {name} ({self.compiled.arch})")
        except CudaError as exc:
            raise _module_load_error(exc, name, self.compiled.arch) from exc
        self._functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        if name not in self._functions:
            drv = driver()
            self._functions[name] = check(drv.cuModuleGetFunction(self.handle, name.encode()), name)
        return self._functions[name]

    def launch(self, spec: KernelLaunch, stream: Any = None) -> None:
        launch(self.function(spec.kernel), spec, stream)

    def close(self) -> None:
        if getattr(self, "handle", None) is not None:
            driver().cuModuleUnload(self.handle)
            self.handle = None


_PTX_ERRORS = (
    "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
    "CUDA_ERROR_INVALID_PTX",
    "CUDA_ERROR_NO_BINARY_FOR_GPU",
    "CUDA_ERROR_INVALID_IMAGE",
    "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
)


def _module_load_error(exc: CudaError, name: str, arch: str) -> CudaError:
    """The driver refused the kernels NVRTC built: say which CUDA versions disagree and the fix."""
    if exc.code not in _PTX_ERRORS:
        return exc

    nvrtc = nvrtc_version()
    driver_cuda = probe().driver_cuda
    ptx, integrated = arch.startswith("compute_"), integrated_gpu()
    reason = nvrtc_mismatch(driver_cuda, nvrtc, ptx=ptx, integrated=integrated) or (
        f"NVRTC {nvrtc[0]}.{nvrtc[1]} built {arch} code that this driver "
        f"(CUDA {driver_cuda[0]}.{driver_cuda[1] if driver_cuda else '?'}) cannot load"
        if driver_cuda
        else f"NVRTC {nvrtc[0]}.{nvrtc[1]} built {arch} code this driver cannot load"
    )
    return CudaError(f"the {name} kernels do not load ({exc.code}): {reason}", code=exc.code)


#: a block's shared memory (static + dynamic) without opting in with MAX_DYNAMIC_SHARED_SIZE_BYTES
SMEM_WITHOUT_OPT_IN = 48 * 1024


def static_shared_bytes(function: Any) -> int:
    """The kernel's static shared memory (its ``__shared__`` arrays), as the driver reports it."""
    drv = driver()
    attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
    return int(check(drv.cuFuncGetAttribute(attr, function), "cuFuncGetAttribute"))


def launch(function: Any, spec: KernelLaunch, stream: Any = None) -> None:
    """Launch ``function`` with ``spec``'s geometry and parameters on ``stream`` (see as_stream)."""
    drv = driver()
    if len(spec.args) != len(spec.argtypes):
        raise CudaError(f"{spec.kernel}: {len(spec.args)} arguments for {len(spec.argtypes)} parameters")
    holders = [t(a) for a, t in zip(spec.args, spec.argtypes, strict=True)]
    pointers = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
    if spec.shared_bytes and spec.shared_bytes + static_shared_bytes(function) > SMEM_WITHOUT_OPT_IN:
        attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        check(drv.cuFuncSetAttribute(function, attr, spec.shared_bytes), "cuFuncSetAttribute")
    check(
        drv.cuLaunchKernel(
            function,
            *spec.grid,
            *spec.block,
            spec.shared_bytes,
            drv.CUstream(as_stream(stream)),
            ctypes.addressof(pointers),
            0,
        ),
        f"launching {spec.kernel}",
    )
