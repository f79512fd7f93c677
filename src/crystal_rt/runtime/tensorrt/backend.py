"""``TensorRTBackend``: runs a plan with cuda-python buffers; optional full-GPU detection.

* One engine; one execution context per thread (``threading.local``), each with its own CUDA stream,
  device buffers and pinned host buffers. ``infer()`` = H2D input, ``execute_async_v3``, D2H of the
  four fixed-size outputs, one stream synchronisation.
* ``detect_gpu()``: the raw image goes to the device once; CLAHE + letterbox (``GpuPreprocessor``),
  the engine and mask pasting (``GpuMaskPaster``) run on the thread's stream; only boxes, scores,
  labels and the pasted crops come back. 16-bit RGB with CLAHE falls back to the CPU preprocess
  (design-notes 18).
* Not done: CUDA-graph capture (the static output shapes would allow it).

UNVERIFIED: nothing in this module has run on a GPU (none here). It is type-checked against
``tensorrt-stubs``; ``crystal-rt doctor --gpu`` and the ``gpu``-marked tests exercise it on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import CrystalRtError, EngineIncompatible, InvalidModel
from ..artifacts import Manifest
from ..backends.base import Backend, CoreOutputs
from ..postprocess import select
from ..result import Instance, InstanceMask
from .modules import load_tensorrt
from .trtlog import get_logger, summarize

if TYPE_CHECKING:
    import tensorrt as trt_types

    from ...cuda.launch import DeviceBuffer, GpuMaskPaster, GpuPreprocessor
    from ...spec import PreprocessSpec

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "masks")


class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc) seen as a numpy array."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        from ...cuda.launch import _driver, check

        self.nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        self.ptr = int(check(_driver().cuMemHostAlloc(self.nbytes, 0), f"cuMemHostAlloc({self.nbytes})"))
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self.array: np.ndarray = np.frombuffer(memoryview(raw), dtype=np.uint8)[
            : int(np.prod(shape)) * dtype.itemsize
        ]
        self.array = self.array.view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            from ...cuda.launch import _driver

            _driver().cuMemFreeHost(self.ptr)
            self.ptr = 0


@dataclass
class _ThreadState:
    context: trt_types.IExecutionContext
    stream: Any
    device: dict[str, DeviceBuffer]
    host: dict[str, PinnedBuffer]
    raw: DeviceBuffer | None = None
    preprocessor: GpuPreprocessor | None = None
    paster: GpuMaskPaster | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stream_handle(self) -> int:
        from ...cuda.launch import as_stream

        return as_stream(self.stream)


class TensorRTBackend(Backend):
    """A TensorRT plan (check its manifest first: :func:`compat.check_manifest`)."""

    name = "tensorrt"

    def __init__(
        self, plan: str | os.PathLike[str], *, manifest: Manifest | None = None, device: int = 0
    ) -> None:
        from ...cuda.launch import ensure_context

        self.path = Path(plan)
        self.manifest = manifest
        self.device = device
        trt = load_tensorrt("Running a TensorRT engine")
        self._trt = trt
        ensure_context(device)
        logger = get_logger(trt)
        mark = logger.mark()
        self.runtime: trt_types.Runtime = trt.Runtime(logger)
        if manifest is not None and manifest.build_options.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
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

    # --- per-thread state -------------------------------------------------------------------
    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        from ...cuda.launch import DeviceBuffer, _driver, check, ensure_context

        ensure_context(self.device)
        driver = _driver()
        stream = check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        context = self.engine.create_execution_context()
        if context is None:
            raise CrystalRtError("TensorRT could not create an execution context", path=self.path)
        dev: dict[str, DeviceBuffer] = {}
        host: dict[str, PinnedBuffer] = {}
        for tname, shape in self.shapes.items():
            dtype = self.dtypes[tname]
            dev[tname] = DeviceBuffer(max(int(np.prod(shape)) * dtype.itemsize, 1))
            host[tname] = PinnedBuffer(shape, dtype)
            if not context.set_tensor_address(tname, dev[tname].ptr):
                raise CrystalRtError(f"TensorRT refused the address of {tname}", path=self.path)
        state = _ThreadState(context, stream, dev, host)
        self._local.state = state
        with self._lock:
            self._states.append(state)
        return state

    def _execute(self, state: _ThreadState) -> None:
        if not state.context.execute_async_v3(state.stream_handle):
            raise CrystalRtError("TensorRT failed to enqueue the engine", path=self.path)

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
        np.copyto(pinned.array, images, casting="same_kind")
        check(
            driver.cuMemcpyHtoDAsync(state.device[INPUT_NAME].ptr, pinned.ptr, pinned.nbytes, stream),
            "cuMemcpyHtoDAsync",
        )
        self._execute(state)
        for tname in OUTPUT_NAMES:
            out = state.host[tname]
            check(driver.cuMemcpyDtoHAsync(out.ptr, state.device[tname].ptr, out.nbytes, stream), "DtoH")
        check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        return CoreOutputs(
            state.host["boxes"].array.astype(np.float32, copy=True),
            state.host["scores"].array.astype(np.float32, copy=True),
            state.host["labels"].array.astype(np.int64, copy=True),
            state.host["masks"].array.astype(np.float32, copy=True),
        )

    # --- full GPU path ----------------------------------------------------------------------
    def detect_gpu(
        self,
        pixels: np.ndarray,
        preprocess: PreprocessSpec,
        *,
        score_threshold: float,
        class_names: tuple[str, ...] | list[str],
    ) -> list[Instance]:
        """Instances for decoded ``pixels`` (uint8/uint16, (H, W) or (H, W, 3)) with CLAHE, letterbox,
        engine and mask paste on the GPU; the same results as ``Detector.detect_pixels`` (UNVERIFIED)."""
        from ...cuda.launch import DeviceBuffer, GpuMaskPaster, GpuPreprocessor, _driver, check
        from ..postprocess import postprocess
        from ..preprocess import apply_clahe, letterbox, normalize

        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else 3
        if preprocess.clahe and channels == 3 and pixels.dtype == np.uint16:
            enhanced = apply_clahe(pixels, preprocess)  # float LAB: CPU only (design-notes 18)
            canvas, scale = letterbox(enhanced, preprocess.input_size)
            outputs = self.infer(normalize(canvas, preprocess))
            return postprocess(
                outputs, scale=scale, height=height, width=width,
                score_threshold=score_threshold, class_names=class_names,
            )  # fmt: skip
        state = self._state()
        if state.preprocessor is None or state.preprocessor.spec != preprocess:
            state.preprocessor = GpuPreprocessor(preprocess, self.device)
            state.paster = state.paster or GpuMaskPaster(self.device)
            state.raw = state.raw or DeviceBuffer()
        assert state.raw is not None and state.paster is not None
        src = np.ascontiguousarray(pixels)
        raw = state.raw.upload(src, state.stream_handle)
        pitch = width * channels * src.dtype.itemsize
        scale = state.preprocessor(
            raw, pitch, height, width, src.dtype, channels, state.device[INPUT_NAME].ptr, state.stream_handle
        )
        self._execute(state)
        driver = _driver()
        stream = driver.CUstream(state.stream_handle)
        for tname in ("boxes", "scores", "labels"):
            out = state.host[tname]
            check(driver.cuMemcpyDtoHAsync(out.ptr, state.device[tname].ptr, out.nbytes, stream), "DtoH")
        check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        boxes_net = state.host["boxes"].array
        scores = state.host["scores"].array.astype(np.float32)
        labels = state.host["labels"].array.astype(np.int64)
        empty = np.zeros((0, 28, 28), np.float32)
        kept: list[tuple[int, tuple[float, float, float, float]]] = []
        for i in select(CoreOutputs(boxes_net, scores, labels, empty), score_threshold):
            x1, y1, x2, y2 = (float(v) / scale for v in boxes_net[i])
            box = (min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height)),
                   min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height)))  # fmt: skip
            if box[2] > box[0] and box[3] > box[1]:
                kept.append((int(i), box))
        m = self.shapes["masks"][-1]
        crops = state.paster(
            state.device["masks"].ptr, m, [b for _, b in kept], height, width,
            prob_indices=[i for i, _ in kept], stream=state.stream_handle,
        )  # fmt: skip
        instances = []
        for (i, box), (crop, x0, y0) in zip(kept, crops, strict=True):
            label = int(labels[i])
            name = class_names[label] if 0 <= label < len(class_names) else str(label)
            mask = InstanceMask(crop, x0, y0, height, width)
            score = float(scores[i])
            instances.append(Instance(label=label, label_name=name, score=score, box=box, mask=mask))
        return instances

    def close(self) -> None:
        from ...cuda.launch import _driver

        with self._lock:
            states, self._states = self._states, []
        for state in states:
            for buf in state.device.values():
                buf.free()
            for pinned in state.host.values():
                pinned.free()
            if state.raw is not None:
                state.raw.free()
            if state.preprocessor is not None:
                state.preprocessor.close()
            if state.paster is not None:
                state.paster.close()
            _driver().cuStreamDestroy(state.stream)
        self._local = threading.local()
