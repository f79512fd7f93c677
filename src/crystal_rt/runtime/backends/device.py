"""What every device backend shares (TensorRT, ONNX Runtime's CUDA and TensorRT providers): per-thread
state and the pipeline's device stages around the engine.

Per thread (``threading.local``): one CUDA stream, the engine's input and output buffers on the
device, one page-locked block for their host copies, the CUDA stages (:class:`~crystal_rt.cuda.
stages.CudaStages`) and the engine's own per-thread object (``_bind``: a TensorRT execution context,
an ONNX Runtime session with its I/O binding). ``infer()`` is H2D of a host tensor, the engine, D2H of
the four outputs (the pipeline's ``stages="cpu"``, engine-only benchmarks); ``device_session()`` is
:class:`DeviceEngineSession`, the pipeline's device stages. A subclass fills ``shapes``/``dtypes``
and implements ``_bind`` and ``_enqueue``. The state of threads that have ended is freed when the
next thread starts; ``close()`` frees the rest from any thread.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...cuda.driver import as_stream, check, ensure_context, hold_context, release_context, synchronize
from ...cuda.driver import driver as cuda_driver
from ...errors import InvalidModel
from ...geometry import CORE_INPUT, CORE_OUTPUTS
from ...results.detection import InstanceMask
from .base import Backend, CoreOutputs, DeviceSession

if TYPE_CHECKING:
    from ...cuda.memory import DeviceBuffer, PinnedBuffer
    from ...cuda.stages import CudaStages
    from ...geometry import InputMap, Window
    from ...spec import PreprocessSpec
    from ..postprocess import Kept


@dataclass
class DeviceState:
    """One thread's stream, buffers, stages and engine object (``handle``)."""

    handle: Any
    stream: Any
    device: dict[str, DeviceBuffer]
    host: dict[str, np.ndarray]
    pinned: PinnedBuffer
    stages: CudaStages
    thread: threading.Thread
    session: DeviceEngineSession | None = None

    @property
    def stream_handle(self) -> int:
        return as_stream(self.stream)


class DeviceBackend(Backend):
    """A core graph run by an engine on CUDA device ``device_index`` (see the module docstring)."""

    path: Path
    device_index: int = 0
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype[Any]]

    def _init_state(self, device: int) -> None:
        self.device_index = device
        self.device = f"cuda:{device}"
        self._local = threading.local()
        self._states: list[DeviceState] = []
        self._lock = threading.Lock()
        self._holds_context = False
        hold_context(device)  # released by close(), after everything made in it is freed
        self._holds_context = True

    def _check_io(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        if list(inputs) != [CORE_INPUT] or sorted(outputs) != sorted(CORE_OUTPUTS):
            raise InvalidModel(
                f"the engine has inputs {list(inputs)} and outputs {list(outputs)}, not the core graph's",
                path=self.path,
            )
        for name, shape in self.shapes.items():
            if any(d < 0 for d in shape):
                raise InvalidModel(
                    f"tensor {name} has a dynamic shape {shape}, not the core graph's", path=self.path
                )

    # --- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _bind(self, buffers: dict[str, DeviceBuffer], stream: Any) -> Any:
        """This thread's engine object, reading and writing ``buffers`` on ``stream``."""

    @abstractmethod
    def _enqueue(self, state: DeviceState) -> None:
        """Queue (or run) the engine on ``state.stream``."""

    def _release(self, handle: Any) -> None:
        """Free an engine object made by ``_bind``."""

    def engine_turn(self) -> AbstractContextManager[object]:
        """Held around the engine's run (override to serialise threads that share engine memory)."""
        return nullcontext()

    def _close_engine(self) -> None:
        """Free what the backend shares between threads (the engine, its runtime), in the context."""

    # --- per-thread state -------------------------------------------------------------------------
    def _state(self) -> DeviceState:
        state: DeviceState | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        from ...cuda.memory import DeviceBuffer, PinnedBuffer
        from ...cuda.stages import CudaStages

        ensure_context(self.device_index)
        self._free_dead_threads()
        driver = cuda_driver()
        stream = check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        sizes = {t: max(int(np.prod(s)) * self.dtypes[t].itemsize, 1) for t, s in self.shapes.items()}
        buffers = {t: DeviceBuffer(n) for t, n in sizes.items()}
        offsets, total = {}, 0
        for tname, nbytes in sizes.items():
            offsets[tname] = total
            total += (nbytes + 255) // 256 * 256
        pinned = PinnedBuffer(total)  # one page-locked block holds every host-side I/O array
        raw = pinned.view((total,), np.uint8)
        host = {
            t: raw[offsets[t] : offsets[t] + sizes[t]].view(self.dtypes[t]).reshape(self.shapes[t])
            for t in self.shapes
        }
        handle = self._bind(buffers, stream)
        stages = CudaStages(self.device_index, stream)
        state = DeviceState(handle, stream, buffers, host, pinned, stages, threading.current_thread())
        self._local.state = state
        with self._lock:
            self._states.append(state)
        return state

    def _free(self, state: DeviceState) -> None:
        state.stages.close()
        self._release(state.handle)
        state.handle = None
        for buf in state.device.values():
            buf.free()
        state.pinned.free()
        cuda_driver().cuStreamDestroy(state.stream)

    def _free_dead_threads(self) -> None:
        """Free the state of threads that have ended (a service's pool replaces its threads)."""
        with self._lock:
            dead = [s for s in self._states if not s.thread.is_alive()]
            self._states = [s for s in self._states if s.thread.is_alive()]
        for state in dead:
            self._free(state)

    def live_contexts(self) -> int:
        """Per-thread engine states held (threads alive, or ended and not yet freed)."""
        with self._lock:
            return len(self._states)

    def _fetch(self, state: DeviceState, names: Sequence[str]) -> None:
        driver = cuda_driver()
        stream = driver.CUstream(state.stream_handle)
        for tname in names:
            out = state.host[tname]
            check(
                driver.cuMemcpyDtoHAsync(out.ctypes.data, state.device[tname].ptr, out.nbytes, stream), "DtoH"
            )

    # --- Backend --------------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> CoreOutputs:
        state = self._state()
        driver = cuda_driver()
        stream = driver.CUstream(state.stream_handle)
        expected = self.shapes[CORE_INPUT]
        if tuple(images.shape) != expected:
            raise InvalidModel(f"input {tuple(images.shape)} is not the engine's {expected}", path=self.path)
        pinned = state.host[CORE_INPUT]
        np.copyto(pinned, images, casting="same_kind")  # float32 -> the engine's input dtype (FP16 I/O too)
        check(
            driver.cuMemcpyHtoDAsync(state.device[CORE_INPUT].ptr, pinned.ctypes.data, pinned.nbytes, stream),
            "cuMemcpyHtoDAsync",
        )
        with self.engine_turn():
            self._enqueue(state)
            self._fetch(state, CORE_OUTPUTS)
            check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        return CoreOutputs(
            state.host["boxes"].astype(np.float32, copy=True),
            state.host["scores"].astype(np.float32, copy=True),
            state.host["labels"].astype(np.int64, copy=True),
            state.host["masks"].astype(np.float32, copy=True),
        )

    def device_session(self) -> DeviceEngineSession | None:
        """The thread's device stages; None (CPU stages, dtype conversion on the host) for an engine
        whose input or masks are not float32, which the letterbox and paste kernels write and read."""
        if self.dtypes[CORE_INPUT] != np.float32 or self.dtypes["masks"] != np.float32:
            return None
        state = self._state()
        if state.session is None:
            state.session = DeviceEngineSession(self, state)
        return state.session

    def close(self) -> None:
        """Free every thread's stream, buffers and engine object, then the engine, then this backend's
        hold on the primary context (callable from any thread; a second call does nothing)."""

        with self._lock:
            states, self._states = self._states, []
            holds, self._holds_context = self._holds_context, False
        if not holds:
            return
        ensure_context(self.device_index)
        try:
            for state in states:
                self._free(state)
            self._close_engine()
        finally:
            self._local = threading.local()
            release_context(self.device_index)


class DeviceEngineSession(DeviceSession):
    """One thread's device stages around a device backend's engine (see :class:`DeviceSession`)."""

    def __init__(self, backend: DeviceBackend, state: DeviceState) -> None:
        self.backend = backend
        self.state = state
        self.device = backend.device

    def can_clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> bool:
        return self.state.stages.can_clahe(pixels)

    def begin(self) -> None:
        self.state.stages.timer.reset()
        self.state.stages.forget_image()

    def clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> None:
        self.state.stages.clahe(pixels, spec)

    def _check_input(self, spec: PreprocessSpec) -> None:
        h, w = spec.input_hw
        if self.backend.shapes[CORE_INPUT] != (1, 3, h, w):
            raise InvalidModel(
                f"the engine's input is {self.backend.shapes[CORE_INPUT]}, the recipe makes (1, 3, {h}, {w})",
                path=self.backend.path,
            )

    def letterbox(
        self, pixels: np.ndarray | None, spec: PreprocessSpec, window: Window | None = None
    ) -> InputMap:
        self._check_input(spec)
        return self.state.stages.letterbox(pixels, spec, self.state.device[CORE_INPUT].ptr, window)

    def set_input(self, tensor: np.ndarray) -> None:
        if tuple(tensor.shape) != self.backend.shapes[CORE_INPUT]:
            raise InvalidModel(
                f"the engine's input is {self.backend.shapes[CORE_INPUT]}, not {tuple(tensor.shape)}",
                path=self.backend.path,
            )
        tensor = np.ascontiguousarray(tensor, dtype=np.float32)
        self.state.stages.upload_input(tensor, self.state.device[CORE_INPUT].ptr)

    def run_engine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self.state
        with self.backend.engine_turn():
            state.stages.timer.start("engine")
            self.backend._enqueue(state)
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
