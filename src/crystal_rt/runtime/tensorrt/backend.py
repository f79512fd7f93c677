"""``TensorRTBackend``: runs a plan with cuda-python buffers, and the pipeline's device stages.

* One engine; per thread (``threading.local``) one execution context, one CUDA stream, the engine's
  device buffers and page-locked host buffers, and the CUDA stages (:class:`~crystal_rt.cuda.stages.
  CudaStages`). ``infer()`` = H2D input, ``execute_async_v3``, D2H of the four fixed-size outputs,
  one synchronisation (the pipeline's ``stages="cpu"`` and engine-only benchmarks).
* ``device_session()``: the thread's :class:`TensorRTSession`, the pipeline's device stages: the raw
  image goes to the device once; CLAHE, letterbox + normalise, the engine and the mask paste run on
  the thread's stream; boxes, scores, labels and the pasted crops come back.
* TensorRT's plugins (``ROIAlign_TRT``, which the ONNX parser maps RoiAlign to) are registered before
  the plan is deserialized, so a plan loads in a process that never built one.
* Not done: CUDA-graph capture (the static output shapes would allow it).

Checked on the simulated GPU (:func:`crystal_rt.testing.simulated_gpu`: host code, buffers, stream
order, the kernels; the engine stage on ONNX Runtime). UNVERIFIED on a real GPU and TensorRT.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import CrystalRtError, CudaError, EngineIncompatible, InvalidModel
from ...geometry import CORE_INPUT, CORE_OUTPUTS
from ..artifacts import Manifest
from ..backends.base import Backend, CoreOutputs, DeviceSession
from ..result import InstanceMask
from .builder import init_plugins
from .modules import load_tensorrt
from .trtlog import create, get_logger, out_of_memory, summarize

if TYPE_CHECKING:
    import tensorrt as trt_types

    from ...cuda.launch import DeviceBuffer, PinnedBuffer
    from ...cuda.stages import CudaStages
    from ...spec import PreprocessSpec
    from ..postprocess import Kept

INPUT_NAME = CORE_INPUT
OUTPUT_NAMES = CORE_OUTPUTS


@dataclass
class _ThreadState:
    context: trt_types.IExecutionContext
    stream: Any
    device: dict[str, DeviceBuffer]
    host: dict[str, np.ndarray]
    pinned: PinnedBuffer
    stages: CudaStages
    thread: threading.Thread
    session: TensorRTSession | None = None

    def free(self) -> None:
        """Release the stream, buffers and stages (the context must be current on the caller)."""
        from ...cuda.launch import _driver

        self.stages.close()
        for buf in self.device.values():
            buf.free()
        self.pinned.free()
        _driver().cuStreamDestroy(self.stream)
        self.context = None  # type: ignore[assignment]

    @property
    def stream_handle(self) -> int:
        from ...cuda.launch import as_stream

        return as_stream(self.stream)


class TensorRTBackend(Backend):
    """A TensorRT plan (check its manifest first: :func:`compat.check_manifest`)."""

    name = "tensorrt"

    def __init__(
        self,
        plan: str | os.PathLike[str],
        *,
        manifest: Manifest | None = None,
        device: int = 0,
        share_activations: bool | None = None,
    ) -> None:
        """``share_activations``: one activation (scratch) memory for every thread's execution context,
        which then run the engine one at a time (TensorRT allows sharing it between contexts that do
        not run concurrently). None: on integrated GPUs (Jetson), where device memory is the
        system's memory."""
        from ...cuda.launch import DeviceBuffer, ensure_context

        self.path = Path(plan)
        self.manifest = manifest
        self.device_index = device
        self.device = f"cuda:{device}"
        trt = load_tensorrt("Running a TensorRT engine")
        self._trt = trt
        ensure_context(device)
        logger = get_logger(trt)
        mark = logger.mark()
        init_plugins(trt, logger)  # before deserializing: a Mask R-CNN plan uses ROIAlign_TRT
        self.runtime: trt_types.Runtime = create(trt.Runtime, logger, "runtime")
        if manifest is not None and manifest.build_options.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None and out_of_memory(logger.since(mark)):
            raise CudaError(
                f"out of GPU memory loading this plan ({summarize(logger.since(mark))})",
                code="CUDA_ERROR_OUT_OF_MEMORY",
                path=self.path,
            )
        if engine is None:
            hint = manifest.rebuild_hint() if manifest else "rebuild it with crystal-rt build-engine"
            raise EngineIncompatible(
                f"TensorRT cannot load this plan ({summarize(logger.since(mark))}); {hint}", path=self.path
            )
        self.engine: trt_types.ICudaEngine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype[Any]] = {}
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(tname))
            if any(d < 0 for d in shape):
                raise InvalidModel(
                    f"tensor {tname} has a dynamic shape {shape}, not the core graph's", path=plan
                )
            self.shapes[tname] = shape
            self.dtypes[tname] = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
            is_input = engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(tname)
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise InvalidModel(
                f"plan has inputs {inputs} and outputs {outputs}, not the core graph's", path=plan
            )
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._scratch: DeviceBuffer | None = None  # shared activation memory (share_activations)
        self._engine_lock = threading.Lock()  # serialises the contexts that share it
        if share_activations is None:
            share_activations = _integrated_gpu(device)
        if share_activations and _user_managed_strategy(trt) is not None:
            size = int(
                getattr(engine, "device_memory_size_v2", 0) or getattr(engine, "device_memory_size", 0)
            )
            self._scratch = DeviceBuffer(max(size, 1))

    @property
    def shares_activations(self) -> bool:
        return self._scratch is not None

    # --- per-thread state -------------------------------------------------------------------
    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        from ...cuda.launch import DeviceBuffer, PinnedBuffer, _driver, check, ensure_context
        from ...cuda.stages import CudaStages

        ensure_context(self.device_index)
        self._free_dead_threads()
        driver = _driver()
        stream = check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        context = self._create_context()
        dev: dict[str, DeviceBuffer] = {}
        sizes = {t: max(int(np.prod(s)) * self.dtypes[t].itemsize, 1) for t, s in self.shapes.items()}
        offsets, total = {}, 0
        for tname, nbytes in sizes.items():
            dev[tname] = DeviceBuffer(nbytes)
            if not context.set_tensor_address(tname, dev[tname].ptr):
                raise CrystalRtError(f"TensorRT refused the address of {tname}", path=self.path)
            offsets[tname] = total
            total += (nbytes + 255) // 256 * 256
        pinned = PinnedBuffer(total)  # one page-locked block holds every host-side I/O array
        raw = pinned.view((total,), np.uint8)
        host = {
            t: raw[offsets[t] : offsets[t] + sizes[t]].view(self.dtypes[t]).reshape(self.shapes[t])
            for t in self.shapes
        }
        stages = CudaStages(self.device_index, stream)
        state = _ThreadState(context, stream, dev, host, pinned, stages, threading.current_thread())
        self._local.state = state
        with self._lock:
            self._states.append(state)
        return state

    def _create_context(self) -> Any:
        if self._scratch is None:
            context = self.engine.create_execution_context()
        else:
            context = self.engine.create_execution_context(_user_managed_strategy(self._trt))
            if context is not None:
                if hasattr(context, "set_device_memory"):
                    context.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
                else:
                    context.device_memory = self._scratch.ptr
        if context is None:
            raise CrystalRtError("TensorRT could not create an execution context", path=self.path)
        return context

    def _free_dead_threads(self) -> None:
        """Free the contexts, streams and buffers of threads that have ended (a service's thread pool
        replaces its threads); the caller's context is current."""
        with self._lock:
            dead = [s for s in self._states if not s.thread.is_alive()]
            self._states = [s for s in self._states if s.thread.is_alive()]
        for state in dead:
            state.free()

    def live_contexts(self) -> int:
        """Execution contexts held for threads (alive, or ended and not yet freed)."""
        with self._lock:
            return len(self._states)

    def _execute(self, state: _ThreadState) -> None:
        if not state.context.execute_async_v3(state.stream_handle):
            logger = get_logger(self._trt)
            raise CrystalRtError(
                f"TensorRT failed to enqueue the engine ({summarize(list(logger.lines)[-3:])})",
                path=self.path,
            )

    def engine_turn(self) -> AbstractContextManager[object]:
        """Held while this thread's engine runs when the contexts share one activation memory."""
        return self._engine_lock if self._scratch is not None else nullcontext()

    def _fetch(self, state: _ThreadState, names: Sequence[str]) -> None:
        from ...cuda.launch import _driver, check

        driver = _driver()
        stream = driver.CUstream(state.stream_handle)
        for tname in names:
            out = state.host[tname]
            check(
                driver.cuMemcpyDtoHAsync(out.ctypes.data, state.device[tname].ptr, out.nbytes, stream), "DtoH"
            )

    # --- Backend ----------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> CoreOutputs:
        from ...cuda.launch import _driver, check

        state = self._state()
        driver = _driver()
        stream = driver.CUstream(state.stream_handle)
        expected = self.shapes[INPUT_NAME]
        if tuple(images.shape) != expected:
            raise InvalidModel(f"input {tuple(images.shape)} is not the engine's {expected}", path=self.path)
        pinned = state.host[INPUT_NAME]
        np.copyto(pinned, images, casting="same_kind")  # float32 -> the plan's input dtype (FP16 I/O too)
        check(
            driver.cuMemcpyHtoDAsync(state.device[INPUT_NAME].ptr, pinned.ctypes.data, pinned.nbytes, stream),
            "cuMemcpyHtoDAsync",
        )
        with self.engine_turn():
            self._execute(state)
            self._fetch(state, OUTPUT_NAMES)
            check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        return CoreOutputs(
            state.host["boxes"].astype(np.float32, copy=True),
            state.host["scores"].astype(np.float32, copy=True),
            state.host["labels"].astype(np.int64, copy=True),
            state.host["masks"].astype(np.float32, copy=True),
        )

    def device_session(self) -> TensorRTSession | None:
        """The thread's device stages; None (CPU stages, dtype conversion on the host) for a plan whose
        input or masks are not float32, which the letterbox and paste kernels write and read."""
        if self.dtypes[INPUT_NAME] != np.float32 or self.dtypes["masks"] != np.float32:
            return None
        state = self._state()
        if state.session is None:
            state.session = TensorRTSession(self, state)
        return state.session

    def close(self) -> None:
        """Free every thread's context, stream and buffers (callable from any thread)."""
        from ...cuda.launch import ensure_context

        with self._lock:
            states, self._states = self._states, []
        if states or self._scratch is not None:
            ensure_context(self.device_index)
        for state in states:
            state.free()
        if self._scratch is not None:
            self._scratch.free()
            self._scratch = None
        self._local = threading.local()


def _user_managed_strategy(trt: Any) -> Any:
    """``ExecutionContextAllocationStrategy.USER_MANAGED`` where this TensorRT has it (10.x+), else None."""
    strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
    return getattr(strategies, "USER_MANAGED", None) if strategies is not None else None


def _integrated_gpu(device: int) -> bool:
    """Whether the GPU shares the system's memory (Jetson): CU_DEVICE_ATTRIBUTE_INTEGRATED."""
    from ...cuda.launch import _driver, check

    driver = _driver()
    try:
        dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
        attr = driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_INTEGRATED
        return bool(check(driver.cuDeviceGetAttribute(attr, dev), "cuDeviceGetAttribute"))
    except CrystalRtError:
        return False


class TensorRTSession(DeviceSession):
    """One thread's device stages around a TensorRT engine (see :class:`DeviceSession`)."""

    def __init__(self, backend: TensorRTBackend, state: _ThreadState) -> None:
        self.backend = backend
        self.state = state
        self.device = backend.device

    def can_clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> bool:
        return self.state.stages.can_clahe(pixels)

    def begin(self) -> None:
        self.state.stages.timer.reset()

    def clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> None:
        self.state.stages.clahe(pixels, spec)

    def letterbox(self, pixels: np.ndarray | None, spec: PreprocessSpec) -> float:
        size = spec.input_size
        if self.backend.shapes[INPUT_NAME] != (1, 3, size, size):
            raise InvalidModel(
                f"the plan's input is {self.backend.shapes[INPUT_NAME]}, the spec's letterbox makes "
                f"(1, 3, {size}, {size})",
                path=self.backend.path,
            )
        return self.state.stages.letterbox(pixels, spec, self.state.device[INPUT_NAME].ptr)

    def run_engine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ...cuda.launch import synchronize

        state = self.state
        with self.backend.engine_turn():
            state.stages.timer.start("engine")
            self.backend._execute(state)
            self.backend._fetch(state, ("boxes", "scores", "labels"))
            state.stages.timer.stop()
            synchronize(state.stream)
        return (
            state.host["boxes"].astype(np.float32, copy=True),
            state.host["scores"].astype(np.float32, copy=True),
            state.host["labels"].astype(np.int64, copy=True),
        )

    def paste(self, kept: Sequence[Kept], height: int, width: int) -> list[InstanceMask]:
        state = self.state
        m = self.backend.shapes["masks"][-1]
        crops = state.stages.paste(
            state.device["masks"].ptr, m, [k.box for k in kept], [k.index for k in kept], height, width
        )
        return [InstanceMask(crop, x0, y0, height, width) for crop, x0, y0 in crops]

    def timings(self) -> dict[str, float]:
        return self.state.stages.timer.elapsed()
