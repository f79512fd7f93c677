"""Test support for crystal-rt and for the software that embeds it: a simulated GPU.

``simulated_gpu()`` runs crystal-rt's GPU path on a machine without a GPU, for CI::

    from crystal_rt import Detector, build_engine
    from crystal_rt.testing import simulated_gpu

    with simulated_gpu() as gpu:
        manifest = build_engine("crystals.onnx", "engines/", backend="tensorrt")
        with Detector.load("engines/crystals") as det:
            result = det.detect("drop.png")        # CLAHE, letterbox, engine, paste "on the GPU"
        print(result.devices, gpu.kernels_launched())

Inside the block, crystal-rt's calls to ``cuda.bindings.driver``, ``tensorrt`` and onnxruntime-gpu's
CUDA/TensorRT providers go to stand-ins (:mod:`.sim_driver`, :mod:`.sim_tensorrt`,
:mod:`.sim_onnxruntime`) while crystal-rt's host code runs unchanged:

What it proves: the host code (buffer sizes, pitches, pointer arguments, launch geometry, stream
order, synchronisation, per-thread contexts, resource release, error handling), the CUDA kernels
themselves (the same ``kernels/*.cu`` that NVRTC compiles for the simulated compute capability,
run through the CPU emulator with the caller's grid, block and parameters) and the TensorRT calls
crystal-rt makes, under TensorRT's documented rules (plugins registered before a plan with
RoiAlign loads, an address for every I/O tensor, the engine's names, shapes and dtypes).

What it cannot prove: TensorRT's own numerics and plugins (the engine stage runs the plan's ONNX
on ONNX Runtime's CPU provider: FP16/INT8 plans give FP32 or Q/DQ results), warp-level behaviour
and races between blocks (the emulator runs blocks one at a time, threads as fibers), concurrency
between streams, real timing (events measure the emulator's wall time) and memory use.

Needs cuda-python and NVRTC (the ``gpu`` extra; both import without a driver), ONNX Runtime and a
C++20 g++ (``$CXX``). The simulation is process-wide (the service's worker threads see it) and
cannot be nested.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cuda import binding
from ..cuda.build import nvrtc_version

if TYPE_CHECKING:
    from types import ModuleType

    from .sim_driver import KernelLaunchRecord, SimulatedDriver

__all__ = ["ENV_VAR", "SimulatedGpu", "simulated_gpu", "simulated_gpu_from_env", "unavailable_reason"]

#: set to 1 to run the crystal-rt command line (and the cold-start child of ``bench``) on the
#: simulated GPU, e.g. ``CRYSTAL_RT_SIMULATED_GPU=1 crystal-rt detect ...`` in an integrator's CI
ENV_VAR = "CRYSTAL_RT_SIMULATED_GPU"

#: TensorRT version the stand-in reports (a 10.x: FP16 builder flag present, as on JetPack 6).
SIMULATED_TENSORRT_VERSION = "10.16.0.sim"


@dataclass
class SimulatedGpu:
    """Handle on the simulated device while :func:`simulated_gpu` is active."""

    driver: SimulatedDriver
    tensorrt: ModuleType | None

    @property
    def launches(self) -> list[KernelLaunchRecord]:
        return self.driver.launches

    def kernels_launched(self) -> list[str]:
        """Names of the kernels launched so far, in order."""
        return [r.kernel for r in self.driver.launches]

    def live_allocations(self) -> dict[int, int]:
        """Device and page-locked allocations not yet freed (``{address: bytes}``)."""
        return self.driver.live_allocations()

    def tensorrt_objects(self) -> dict[str, int]:
        """Live simulated TensorRT runtimes, engines and execution contexts (``{}``: none)."""
        return self.tensorrt.simulation.live_objects() if self.tensorrt is not None else {}

    def primary_context_refs(self) -> int:
        """Outstanding retains of the primary context (0 once everything released it)."""
        return self.driver.primary_context_refs()

    def fail_next(self, function: str, code_name: str, times: int = 1) -> None:
        """Make the next ``times`` calls of driver ``function`` fail with ``CUresult.<code_name>``."""
        self.driver.fail_next(function, getattr(self.driver.CUresult, code_name), times)


@contextmanager
def simulated_gpu(
    *,
    name: str = "crystal-rt simulated GPU",
    compute_capability: str = "8.9",
    memory_bytes: int = 8 << 30,
    driver_version: int = 13000,
    integrated: bool = False,
    tensorrt: bool = True,
    tensorrt_version: str = SIMULATED_TENSORRT_VERSION,
    onnxruntime_providers: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    broken_providers: dict[str, str] | None = None,
    cuda_libraries: str = "pip",
) -> Iterator[SimulatedGpu]:
    """Run crystal-rt's GPU path (CUDA kernels, and TensorRT engines unless ``tensorrt=False``) on
    the CPU inside the block; see the module docstring for what it does and does not prove.

    ``onnxruntime_providers``: the GPU execution providers of the stand-in onnxruntime-gpu (empty: a
    CPU-only onnxruntime); ``broken_providers``: provider -> the loader message it logs before ONNX
    Runtime falls back to the CPU (e.g. a missing libcudnn); ``cuda_libraries``: where onnxruntime-gpu's
    CUDA and cuDNN libraries are — ``"pip"`` (the nvidia wheels: the providers load only after
    ``onnxruntime.preload_dlls()``), ``"system"`` (on the loader's path) or ``"missing"``."""
    from .sim_driver import SimulatedDriver
    from .sim_onnxruntime import SimulatedOnnxRuntime
    from .sim_tensorrt import SimulatedTensorRT

    major, _, minor = compute_capability.partition(".")
    driver = SimulatedDriver(
        name=name,
        compute_capability=(int(major), int(minor or 0)),
        memory_bytes=memory_bytes,
        driver_version=driver_version,
        integrated=integrated,
    )
    modules: dict[str, ModuleType] = {binding.DRIVER: driver}  # type: ignore[dict-item]
    trt = SimulatedTensorRT(driver, tensorrt_version).module() if tensorrt else None
    if trt is not None:
        modules[binding.TENSORRT] = trt
    modules[binding.ONNXRUNTIME_GPU] = SimulatedOnnxRuntime(
        driver, onnxruntime_providers, broken_providers or {}, cuda_libraries
    )
    with binding.overridden(modules):
        yield SimulatedGpu(driver, trt)


def unavailable_reason() -> str | None:
    """Why the simulated GPU cannot run here (for a test's skip message), or None where it can."""

    for module, package in (("cuda.bindings.driver", "cuda-python"), ("onnxruntime", "onnxruntime")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"the simulated GPU needs {package}"
    if shutil.which(os.environ.get("CXX") or "g++") is None:
        return "the simulated GPU needs g++ (C++20) or $CXX"

    try:
        nvrtc_version()
    except Exception as exc:  # no NVRTC library: MissingDependency, or the loader's own error
        return f"the simulated GPU needs NVRTC: {exc}"
    return None


def simulated_gpu_from_env() -> AbstractContextManager[SimulatedGpu | None]:
    """``simulated_gpu()`` where ``$CRYSTAL_RT_SIMULATED_GPU`` is ``1`` (else a context that does nothing)."""

    if os.environ.get(ENV_VAR, "").strip() in ("", "0"):
        return nullcontext()
    return simulated_gpu()
