"""``OrtGpuBackend``: the core ONNX on ONNX Runtime's CUDA or TensorRT execution provider, on the device
backend's per-thread streams and stages (the same pipeline as TensorRT plans).

Per thread, ``_bind`` creates one InferenceSession whose provider computes on that thread's CUDA
stream (``user_compute_stream``) and one I/O binding of the engine's input and four outputs to the
thread's device buffers: the CLAHE + letterbox kernel writes the input tensor there, ONNX Runtime
reads it and writes its fixed-size outputs in place (``run_with_iobinding``), the paste kernel reads
the masks; only results come back. ONNX Runtime's ``Run`` waits for its stream before returning.
A session per thread costs the model's weights once per thread on the device (a few threads in a
service), as TensorRT's contexts cost their activations.

The TensorRT provider keeps its engine cache in the engine folder (``NAME.ort-trt-cache``), built by
``crystal-rt build-engine --backend onnxruntime-trt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...cuda.binding import onnxruntime_gpu
from ...cuda.driver import as_stream, ensure_context
from ...errors import BackendUnavailable, EngineIncompatible, InferenceError, InvalidModel
from ..tensorrt import device
from .device import DeviceBackend, DeviceState
from .ort_providers import CUDA_EP, PROVIDER_OF, TRT_EP, probe, session

#: the ONNX Runtime GPU engines (build-engine --backend)
ORT_GPU_BACKENDS = tuple(PROVIDER_OF)

if TYPE_CHECKING:
    from ...cuda.memory import DeviceBuffer
    from ..artifacts import Manifest

_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def provider_chain(
    provider: str, options: dict[str, str], device: int, stream: int | None
) -> list[tuple[str, dict[str, str]]]:
    """The providers of one session: the TensorRT provider falls back to the CUDA provider for the
    nodes it does not take (ONNX Runtime's usual chain); both on ``stream`` where given."""
    common = {"device_id": str(device)}
    if stream is not None:
        common |= {"has_user_compute_stream": "1", "user_compute_stream": str(int(stream))}
    if provider == TRT_EP:
        return [(TRT_EP, {**common, **options}), (CUDA_EP, dict(common))]
    return [(CUDA_EP, {**common, **options})]


class OrtGpuBackend(DeviceBackend):
    """An ``onnxruntime-cuda`` or ``onnxruntime-trt`` engine (check its manifest first)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        backend: str,
        provider_options: dict[str, str] | None = None,
        manifest: Manifest | None = None,
        device: int = 0,
    ) -> None:
        from .onnxruntime import session_options

        self.path = Path(model)
        self.name = backend
        self.provider = PROVIDER_OF[backend]
        self.manifest = manifest
        self.provider_options = dict(provider_options or {})
        if self.provider == TRT_EP and "trt_engine_cache_path" in self.provider_options:
            cache = Path(self.provider_options["trt_engine_cache_path"])
            if not cache.is_absolute():  # stored relative to the engine folder
                self.provider_options["trt_engine_cache_path"] = str(self.path.parent / cache)
        self._init_state(device)
        try:
            ok, why = probe(self.provider)
            if not ok:
                raise BackendUnavailable(f"this engine runs on {self.provider}, and {why}", path=self.path)
            ensure_context(device)
            self._options = session_options(1)
            # the engine's tensors, from a session on this device (the one the first thread then uses)
            first = self._session(None)
            self.shapes, self.dtypes = {}, {}
            for info in [*first.get_inputs(), *first.get_outputs()]:
                self.shapes[info.name] = tuple(int(d) for d in info.shape)
                self.dtypes[info.name] = np.dtype(_NP.get(info.type, np.float32))
            self._check_io([i.name for i in first.get_inputs()], [o.name for o in first.get_outputs()])
            del first
        except BaseException:
            self.close()  # a backend that failed to open holds nothing
            raise

    def _session(self, stream: Any) -> Any:
        providers = provider_chain(self.provider, self.provider_options, self.device_index, stream)
        return session(self.path, self._options, providers, f"Running {self.path.name} on {self.provider}")

    # --- DeviceBackend ------------------------------------------------------------------------
    def _bind(self, buffers: dict[str, DeviceBuffer], stream: Any) -> Any:
        sess = self._session(as_stream(stream))
        binding = sess.io_binding()
        for info in sess.get_inputs():
            buf = buffers[info.name]
            binding.bind_input(
                info.name,
                "cuda",
                self.device_index,
                self.dtypes[info.name],
                list(self.shapes[info.name]),
                buf.ptr,
            )
        for info in sess.get_outputs():
            buf = buffers[info.name]
            binding.bind_output(
                info.name,
                "cuda",
                self.device_index,
                self.dtypes[info.name],
                list(self.shapes[info.name]),
                buf.ptr,
            )
        return sess, binding

    def _enqueue(self, state: DeviceState) -> None:
        sess, binding = state.handle
        try:
            sess.run_with_iobinding(binding)
        except Exception as exc:  # ONNX Runtime raises its own pybind types
            raise InferenceError(
                f"ONNX Runtime ({self.provider}) failed: {str(exc).strip()[:300]}", path=self.path
            ) from exc

    def _release(self, handle: Any) -> None:
        if handle is not None:
            _sess, binding = handle
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()


def check_ort_gpu_manifest(manifest: Manifest) -> None:
    """Refuse, in one sentence with the rebuild command, an engine built for another ONNX Runtime or GPU."""

    ort = onnxruntime_gpu()
    gpu = device.gpu()
    if gpu is None:
        raise BackendUnavailable(
            f"this {manifest.backend} engine runs on an NVIDIA GPU, and none was found here",
            path=manifest.path,
        )
    where = f"{manifest.gpu_name} (compute {manifest.compute_capability})"
    built = f"ONNX Runtime {manifest.backend_version} on {where}"
    here = f"ONNX Runtime {ort.__version__} on {gpu.name} (compute {gpu.compute_capability})"
    if (manifest.backend_version, manifest.compute_capability) != (ort.__version__, gpu.compute_capability):
        raise EngineIncompatible(
            f"this engine was built with {built}, this machine has {here}; {manifest.rebuild_hint()}",
            path=manifest.path,
        )


def open_ort_gpu(manifest: Manifest) -> Any:
    if manifest.backend not in ORT_GPU_BACKENDS:
        raise InvalidModel(f"not an ONNX Runtime GPU engine: {manifest.backend}", path=manifest.path)
    return OrtGpuBackend(
        manifest.engine_path,
        backend=manifest.backend,
        provider_options=dict(manifest.build_options.get("provider_options", {})),
        manifest=manifest,
    )
