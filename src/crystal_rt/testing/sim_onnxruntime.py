"""A stand-in for onnxruntime-gpu's CUDA and TensorRT execution providers: the simulated GPU's.

Test support (see :func:`crystal_rt.testing.simulated_gpu`). Everything but the GPU providers is the
installed ``onnxruntime``. A session asked for ``CUDAExecutionProvider`` or
``TensorrtExecutionProvider`` is a CPU session underneath, bound to the simulated device's memory:

* ``get_providers()`` names the GPU provider, as a real GPU session does;
* ``io_binding()`` takes ``bind_input``/``bind_output`` with ``device_type="cuda"`` and a device
  pointer (checked to be simulated device memory of the tensor's size);
* ``run_with_iobinding`` queues the inference on the provider's ``user_compute_stream`` (the legacy
  stream without one) of the simulated driver: it reads the inputs from device memory, runs the CPU
  session, writes the outputs to the bound device memory; then, as ONNX Runtime's ``Run`` does, it
  waits for that stream;
* a provider listed in ``broken`` does what ONNX Runtime does when a provider's library cannot load:
  log the loader's message on stderr and fall back to the CPU silently;
* where the CUDA and cuDNN libraries are (``cuda_libraries``), as onnxruntime-gpu >= 1.21 finds them:
  ``"pip"`` (the default, as the ``gpu-cu*`` extras install them: the ``nvidia-*`` wheels, which the
  dynamic loader does not search) — a GPU provider loads only after ``preload_dlls()`` was called, and
  before that logs ``libcudnn.so.9: cannot open shared object file`` and falls back to the CPU, as the
  real provider bridge does; ``"system"`` (on the loader's path: a system CUDA/cuDNN install) — it always
  loads; ``"missing"`` — ``preload_dlls()`` prints ``Failed to load ...`` for each (it prints, it does
  not raise) and the provider never loads.

What it cannot prove: ONNX Runtime's GPU kernels and their numerics, the TensorRT provider's engine
builds and cache, memory use, timing.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .sim_driver import SimulatedDriver

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CUDA_LIBRARIES = ("pip", "system", "missing")
#: what onnxruntime-gpu 1.32's provider bridge logs when cuDNN is not found (the first library it needs)
_NOT_FOUND = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2195 TryGetProviderInfo_CUDA] Failed to load library "
    "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file: "
    "No such file or directory"
)


class _Binding:
    def __init__(self) -> None:
        self.inputs: dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]] = {}
        self.outputs: dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]] = {}

    def _bind(
        self, table: dict[str, Any], name: str, device_type: str, element_type: Any, shape: Any, ptr: int
    ) -> None:
        if device_type != "cuda":
            raise RuntimeError(f"the simulated CUDA provider binds cuda memory, not {device_type!r}")
        table[name] = (int(ptr), np.dtype(element_type), tuple(int(d) for d in shape))

    def bind_input(
        self, name: str, device_type: str, device_id: int, element_type: Any, shape: Any, buffer_ptr: int
    ) -> None:
        self._bind(self.inputs, name, device_type, element_type, shape, buffer_ptr)

    def bind_output(
        self,
        name: str,
        device_type: str = "cpu",
        device_id: int = 0,
        element_type: Any = None,
        shape: Any = None,
        buffer_ptr: int | None = None,
    ) -> None:
        if buffer_ptr is None or element_type is None or shape is None:
            raise RuntimeError("the simulated CUDA provider needs outputs bound to device memory")
        self._bind(self.outputs, name, device_type, element_type, shape, buffer_ptr)

    def clear_binding_inputs(self) -> None:
        self.inputs.clear()

    def clear_binding_outputs(self) -> None:
        self.outputs.clear()


class _GpuSession:
    def __init__(
        self, cpu: Any, driver: SimulatedDriver, providers: list[tuple[str, dict[str, str]]]
    ) -> None:
        self._cpu = cpu
        self._driver = driver
        self._providers = providers
        options = providers[0][1]
        self._stream = (
            int(options.get("user_compute_stream", 0)) if options.get("has_user_compute_stream") == "1" else 0
        )

    def get_providers(self) -> list[str]:
        return [name for name, _ in self._providers] + ["CPUExecutionProvider"]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {name: dict(options) for name, options in self._providers}

    def io_binding(self) -> _Binding:
        return _Binding()

    def _view(self, ptr: int, dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = self._driver.device_view(ptr, nbytes)
        if raw is None:
            raise RuntimeError(f"{name}: {nbytes} bytes at {ptr:#x} are not simulated device memory")
        return raw.view(dtype).reshape(shape)

    def run_with_iobinding(self, binding: _Binding, run_options: Any = None) -> None:
        expected_in = {i.name for i in self._cpu.get_inputs()}
        expected_out = [o.name for o in self._cpu.get_outputs()]
        if set(binding.inputs) != expected_in or set(binding.outputs) != set(expected_out):
            raise RuntimeError("every input and output must be bound before run_with_iobinding")
        inputs = {n: self._view(p, d, s, n) for n, (p, d, s) in binding.inputs.items()}
        outputs = {n: self._view(p, d, s, n) for n, (p, d, s) in binding.outputs.items()}

        def work() -> None:
            results = self._cpu.run(expected_out, {n: np.array(v) for n, v in inputs.items()})
            for name, value in zip(expected_out, results, strict=True):
                outputs[name][...] = (
                    np.asarray(value).astype(outputs[name].dtype).reshape(outputs[name].shape)
                )

        code = self._driver.enqueue_host_work(self._stream, "ONNX Runtime run", work)
        if code != self._driver.OK:
            raise RuntimeError(f"the user compute stream {self._stream} is not a simulated stream")
        (err,) = self._driver.cuStreamSynchronize(self._stream)  # ORT's Run waits for its stream
        if err != self._driver.OK:
            raise RuntimeError(f"CUDA failure {getattr(err, 'name', err)}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cpu, name)


class SimulatedOnnxRuntime(ModuleType):
    """Module-like: the installed onnxruntime, with simulated GPU providers."""

    def __init__(
        self,
        driver: SimulatedDriver,
        providers: tuple[str, ...],
        broken: dict[str, str],
        cuda_libraries: str = "pip",
    ) -> None:
        if cuda_libraries not in CUDA_LIBRARIES:
            raise ValueError(f"cuda_libraries must be one of {CUDA_LIBRARIES}, not {cuda_libraries!r}")
        super().__init__("onnxruntime")
        import onnxruntime as real

        self._real = real
        self._driver = driver
        self._providers = tuple(p for p in providers if p in GPU_PROVIDERS)
        self._broken = dict(broken)
        self._libraries = cuda_libraries
        self.preloaded = False
        self.__version__ = real.__version__
        self.__file__ = "<crystal-rt simulated onnxruntime-gpu>"

    def preload_dlls(
        self, cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory: str | None = None
    ) -> None:
        """onnxruntime.preload_dlls: loads the nvidia wheels' CUDA and cuDNN libraries into the process."""
        if self._libraries == "missing":
            for name in ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9"):
                error = f"{name}: cannot open shared object file: No such file or directory"
                sys.stdout.write(f"Failed to load {name}: {error}\n")  # the real one print()s
            return
        self.preloaded = True

    def _libraries_found(self) -> bool:
        return self._libraries == "system" or (self._libraries == "pip" and self.preloaded)

    def get_available_providers(self) -> list[str]:
        return [
            *self._providers,
            *(p for p in self._real.get_available_providers() if p not in self._providers),
        ]

    def InferenceSession(
        self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None, **kw: Any
    ) -> Any:
        chain = [
            (p, {}) if isinstance(p, str) else (p[0], dict(p[1]))
            for p in providers or ["CPUExecutionProvider"]
        ]
        gpu = [(name, opts) for name, opts in chain if name in GPU_PROVIDERS]
        cpu_only = ["CPUExecutionProvider"]
        if not gpu:
            return self._real.InferenceSession(
                path_or_bytes, sess_options=sess_options, providers=cpu_only, **kw
            )
        name = gpu[0][0]
        if name not in self._providers:
            raise ValueError(f"{name} is not in available provider names")
        broken = self._broken.get(name) or (None if self._libraries_found() else _NOT_FOUND)
        if broken is not None:
            os.write(2, (broken + "\n").encode())  # ONNX Runtime logs it, then uses the CPU
            return self._real.InferenceSession(
                path_or_bytes, sess_options=sess_options, providers=cpu_only, **kw
            )
        cpu = self._real.InferenceSession(path_or_bytes, sess_options=sess_options, providers=cpu_only, **kw)
        return _GpuSession(cpu, self._driver, gpu)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
