"""Load the compiled kernels and launch them (cuda-python driver API) on a caller's CUDA stream.

Host-side arithmetic that the kernels rely on (letterbox size and normalisation constants, the
expanded mask boxes and the paste output layout) is plain numpy here, so that the CPU-emulator
tests check exactly what the GPU path launches. Everything from ``cuda.bindings`` is imported
lazily, inside the functions that need it.

Buffers and layouts
-------------------
* letterbox (``kernels/letterbox.cu``): source uint8/uint16, gray or interleaved RGB, rows
  ``src_pitch`` bytes apart, on the device; output float32 ``[1, 3, S, S]`` (the engine input),
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
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, CudaError, InvalidImage
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


# ---------------------------------------------------------------------------------------------
# pure host arithmetic (no CUDA)


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


# ---------------------------------------------------------------------------------------------
# streams


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


# ---------------------------------------------------------------------------------------------
# driver plumbing


def _driver() -> ModuleType:
    from .binding import driver

    return driver("Running the CUDA kernels")


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(CUresult, *values)`` tuple, raising CudaError on failure."""
    driver = _driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        code = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"{what} failed: {code}", code=code)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def ensure_context(device: int = 0) -> Any:
    """Make a context current: the calling thread's current one, else the device's primary context
    (the one the CUDA runtime, torch and CuPy use)."""
    from .probe import probe

    driver = _driver()
    state = probe()
    if not state.usable:
        raise BackendUnavailable(state.message)
    ctx = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if ctx is not None and int(ctx) != 0:
        return ctx
    dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
    ctx = check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
    check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return ctx


class Module:
    """A compiled kernel file loaded into the current context."""

    def __init__(self, name: str, device: int = 0, arch: str | None = None) -> None:
        from .build import compile_kernel, device_arch, nvrtc_version, target_for
        from .probe import nvrtc_mismatch, probe

        self.context = ensure_context(device)
        target = target_for(arch if arch is not None else device_arch(device))
        mismatch = nvrtc_mismatch(probe().driver_cuda, nvrtc_version(), ptx=target.startswith("compute_"))
        if mismatch is not None:
            raise BackendUnavailable(mismatch)
        self.compiled = compile_kernel(name, target, device=device)
        driver = _driver()
        image = self.compiled.image
        if self.compiled.is_ptx and not image.endswith(b"\0"):
            image += b"\0"
        try:
            self.handle = check(driver.cuModuleLoadData(image), f"loading {name} ({self.compiled.arch})")
        except CudaError as exc:
            raise _module_load_error(exc, name, self.compiled.arch) from exc
        self._functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        if name not in self._functions:
            driver = _driver()
            self._functions[name] = check(driver.cuModuleGetFunction(self.handle, name.encode()), name)
        return self._functions[name]

    def launch(self, spec: KernelLaunch, stream: Any = None) -> None:
        launch(self.function(spec.kernel), spec, stream)

    def close(self) -> None:
        if getattr(self, "handle", None) is not None:
            _driver().cuModuleUnload(self.handle)
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
    from .build import nvrtc_version
    from .probe import nvrtc_mismatch, probe

    nvrtc = nvrtc_version()
    driver_cuda = probe().driver_cuda
    reason = nvrtc_mismatch(driver_cuda, nvrtc, ptx=arch.startswith("compute_")) or (
        f"NVRTC {nvrtc[0]}.{nvrtc[1]} built {arch} code that this driver "
        f"(CUDA {driver_cuda[0]}.{driver_cuda[1] if driver_cuda else '?'}) cannot load"
        if driver_cuda
        else f"NVRTC {nvrtc[0]}.{nvrtc[1]} built {arch} code this driver cannot load"
    )
    return CudaError(f"the {name} kernels do not load ({exc.code}): {reason}", code=exc.code)


def _out_of_memory(exc: CudaError, nbytes: int, where: str) -> CudaError:
    """An out-of-memory error naming what was asked for and what is free."""
    if exc.code != "CUDA_ERROR_OUT_OF_MEMORY":
        return exc
    free = ""
    try:
        free_b, total_b = check(_driver().cuMemGetInfo(), "cuMemGetInfo")
        free = f"; {int(free_b) / 2**20:.1f} MiB of {int(total_b) / 2**20:.0f} MiB are free"
    except CudaError:
        pass
    return CudaError(
        f"out of {where} memory: asked for {nbytes / 2**20:.1f} MiB{free} (close other GPU programs, or use "
        "smaller images / a smaller engine)",
        code=exc.code,
    )


def launch(function: Any, spec: KernelLaunch, stream: Any = None) -> None:
    """Launch ``function`` with ``spec``'s geometry and parameters on ``stream`` (see as_stream)."""
    driver = _driver()
    if len(spec.args) != len(spec.argtypes):
        raise CudaError(f"{spec.kernel}: {len(spec.args)} arguments for {len(spec.argtypes)} parameters")
    holders = [t(a) for a, t in zip(spec.args, spec.argtypes, strict=True)]
    pointers = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
    if spec.shared_bytes > 48 * 1024:
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        check(driver.cuFuncSetAttribute(function, attr, spec.shared_bytes), "cuFuncSetAttribute")
    check(
        driver.cuLaunchKernel(
            function,
            *spec.grid,
            *spec.block,
            spec.shared_bytes,
            driver.CUstream(as_stream(stream)),
            ctypes.addressof(pointers),
            0,
        ),
        f"launching {spec.kernel}",
    )


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
                self.ptr = int(check(_driver().cuMemAlloc(max(nbytes, 1)), f"cuMemAlloc({nbytes})"))
            except CudaError as exc:
                raise _out_of_memory(exc, nbytes, "GPU") from exc
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _driver().cuMemFree(self.ptr)
            self.ptr = 0
            self.nbytes = 0

    def upload(self, array: np.ndarray, stream: Any = None) -> int:
        data = np.ascontiguousarray(array)
        self.reserve(data.nbytes)
        if data.nbytes:
            driver = _driver()
            check(
                driver.cuMemcpyHtoDAsync(
                    self.ptr, data.ctypes.data, data.nbytes, driver.CUstream(as_stream(stream))
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
                self.ptr = int(check(_driver().cuMemHostAlloc(size, 0), f"cuMemHostAlloc({size})"))
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
            _driver().cuMemFreeHost(self.ptr)
            self.ptr = 0
            self.nbytes = 0
            self._raw = None

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


class EventTimer:
    """CUDA events bracketing named stages on one stream; ``elapsed()`` after the stream is synchronised."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._events: list[Any] = []  # reused between images
        self._marks: list[tuple[str, Any, Any]] = []

    def reset(self) -> None:
        self._marks = []

    def _event(self, index: int) -> Any:
        while len(self._events) <= index:
            driver = _driver()
            self._events.append(
                check(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate")
            )
        return self._events[index]

    def start(self, stage: str) -> None:
        index = 2 * len(self._marks)
        begin, end = self._event(index), self._event(index + 1)
        driver = _driver()
        check(driver.cuEventRecord(begin, driver.CUstream(as_stream(self.stream))), "cuEventRecord")
        self._marks.append((stage, begin, end))

    def stop(self) -> None:
        driver = _driver()
        _, _, end = self._marks[-1]
        check(driver.cuEventRecord(end, driver.CUstream(as_stream(self.stream))), "cuEventRecord")

    def elapsed(self) -> dict[str, float]:
        """Milliseconds per stage (summed where a stage was timed more than once)."""
        driver = _driver()
        out: dict[str, float] = {}
        for stage, begin, end in self._marks:
            check(driver.cuEventSynchronize(end), "cuEventSynchronize")
            ms = float(check(driver.cuEventElapsedTime(begin, end), "cuEventElapsedTime"))
            out[stage] = out.get(stage, 0.0) + ms
        return out

    def close(self) -> None:
        driver = _driver()
        for event in self._events:
            driver.cuEventDestroy(event)
        self._events, self._marks = [], []


def synchronize(stream: Any = None) -> None:
    driver = _driver()
    check(driver.cuStreamSynchronize(driver.CUstream(as_stream(stream))), "cuStreamSynchronize")


def download(ptr: int, nbytes: int, stream: Any = None) -> np.ndarray:
    """Copy ``nbytes`` from the device into a new uint8 array (synchronises ``stream``)."""
    out = np.empty(nbytes, dtype=np.uint8)
    if nbytes:
        driver = _driver()
        stream_obj = driver.CUstream(as_stream(stream))
        check(driver.cuMemcpyDtoHAsync(out.ctypes.data, ptr, nbytes, stream_obj), "cuMemcpyDtoHAsync")
        check(driver.cuStreamSynchronize(stream_obj), "cuStreamSynchronize")
    return out


# ---------------------------------------------------------------------------------------------
# high-level launchers


class GpuPreprocessor:
    """CLAHE (``kernels/clahe.cu``) then letterbox + normalise into the engine input, on one stream.

    Gray uint8/uint16 images: CLAHE directly. 8-bit RGB: ``rgb_to_lab_u8`` -> CLAHE on L (in place)
    -> ``lab_to_rgb_u8``, as ``preprocess.apply_clahe``. 16-bit RGB with CLAHE is not available on
    the GPU (the CPU path goes through float LAB): BackendUnavailable. Nothing is synchronised;
    ``src`` stays untouched (CLAHE writes internal buffers). One instance per stream/thread.
    """

    def __init__(self, spec: PreprocessSpec, device: int = 0, *, fma: bool | None = None) -> None:
        from ..arith import opencv_fma

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
            driver = _driver()
            check(
                driver.cuMemsetD8Async(scratch, 0, self._scratch.nbytes, driver.CUstream(as_stream(stream))),
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
        from ..arith import opencv_fma

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
