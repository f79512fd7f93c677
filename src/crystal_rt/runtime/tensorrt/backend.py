"""``TensorRTBackend``: a TensorRT plan on the device backend's per-thread streams and stages.

* One engine; per thread one execution context (made by ``_bind``, its I/O tensors bound to the
  thread's device buffers), and everything :class:`~crystal_rt.runtime.backends.device.DeviceBackend`
  keeps per thread: stream, buffers, page-locked host copies, the pipeline's CUDA stages.
* TensorRT's plugins (``ROIAlign_TRT``, which the ONNX parser maps RoiAlign to) are registered before
  the plan is deserialized, so a plan loads in a process that never built one.
* On an integrated GPU (Jetson) the contexts share one activation memory (``USER_MANAGED``) and take
  turns (``engine_turn``), since there device memory is the system's.
* No CUDA-graph capture: the engine's NonZero and NonMaxSuppression layers have data-dependent shapes
  inside (its outputs are static, which is not enough).

Checked on the simulated GPU (:func:`crystal_rt.testing.simulated_gpu`: host code, buffers, stream
order, the kernels; the engine stage on ONNX Runtime). UNVERIFIED on a real GPU and TensorRT.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...cuda.driver import ensure_context, integrated_gpu
from ...errors import CudaError, EngineIncompatible, InferenceError
from ..artifacts import Manifest
from ..backends.device import DeviceBackend, DeviceState
from .modules import load_tensorrt
from .plugins import init_plugins, load_plugin_libraries
from .trtlog import create, get_logger, out_of_memory, summarize

if TYPE_CHECKING:
    import tensorrt as trt_types

    from ...cuda.memory import DeviceBuffer


class TensorRTBackend(DeviceBackend):
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
        from ...cuda.memory import DeviceBuffer

        self.path = Path(plan)
        self.manifest = manifest
        self._scratch: DeviceBuffer | None = None  # shared activation memory (share_activations)
        self._init_state(device)
        try:
            trt = load_tensorrt("Running a TensorRT engine")
            self._trt = trt
            ensure_context(device)
            logger = get_logger(trt)
            mark = logger.mark()
            init_plugins(trt, logger)  # before deserializing: a Mask R-CNN plan uses ROIAlign_TRT
            self.runtime: trt_types.Runtime = create(trt.Runtime, logger, "runtime")
            if manifest is not None and manifest.build_options.get("version_compatible"):
                self.runtime.engine_host_code_allowed = True
                # as trtexec does at inference time (its --dynamicPlugins): the plan's plugin libraries
                load_plugin_libraries(
                    self.runtime, list(manifest.build_options.get("serialized_plugins", []))
                )
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
                    f"TensorRT cannot load this plan ({summarize(logger.since(mark))}); {hint}",
                    path=self.path,
                )
            self.engine: trt_types.ICudaEngine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.dtypes: dict[str, np.dtype[Any]] = {}
            inputs: list[str] = []
            outputs: list[str] = []
            for i in range(engine.num_io_tensors):
                tname = engine.get_tensor_name(i)
                self.shapes[tname] = tuple(int(d) for d in engine.get_tensor_shape(tname))
                self.dtypes[tname] = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
                is_input = engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT
                (inputs if is_input else outputs).append(tname)
            self._check_io(inputs, outputs)
            self._engine_lock = threading.Lock()  # serialises the contexts that share it
            if share_activations is None:
                share_activations = integrated_gpu(device)
            if share_activations and _user_managed_strategy(trt) is not None:
                size = int(
                    getattr(engine, "device_memory_size_v2", 0) or getattr(engine, "device_memory_size", 0)
                )
                self._scratch = DeviceBuffer(max(size, 1))
        except BaseException:
            self.close()  # a backend that failed to open holds nothing
            raise

    @property
    def shares_activations(self) -> bool:
        return self._scratch is not None

    # --- DeviceBackend ------------------------------------------------------------------------
    def _bind(self, buffers: dict[str, DeviceBuffer], stream: Any) -> Any:
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
            raise InferenceError("TensorRT could not create an execution context", path=self.path)
        for tname, buf in buffers.items():
            if not context.set_tensor_address(tname, buf.ptr):
                raise InferenceError(f"TensorRT refused the address of {tname}", path=self.path)
        return context

    def _enqueue(self, state: DeviceState) -> None:
        logger = get_logger(self._trt)
        mark = logger.mark()
        if not state.handle.execute_async_v3(state.stream_handle):
            raise InferenceError(
                f"TensorRT failed to enqueue the engine ({summarize(logger.since(mark))})", path=self.path
            )

    def engine_turn(self) -> AbstractContextManager[object]:
        """Held while this thread's engine runs when the contexts share one activation memory."""
        return self._engine_lock if self._scratch is not None else nullcontext()

    def _close_engine(self) -> None:
        """The shared activation memory, the engine and the runtime (the threads' contexts are gone)."""
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.free()
        self.engine = None  # type: ignore[assignment]
        self.runtime = None  # type: ignore[assignment]


def _user_managed_strategy(trt: Any) -> Any:
    """``ExecutionContextAllocationStrategy.USER_MANAGED`` where this TensorRT has it (10.x+), else None."""
    strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
    return getattr(strategies, "USER_MANAGED", None) if strategies is not None else None
