"""ONNX Runtime GPU engines (CUDA and TensorRT execution providers) on the simulated GPU: built, checked
against this machine, run by the same device pipeline as TensorRT plans (IOBinding on the device
buffers), equal to the CPU pipeline; providers that cannot load are named, never silently the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_rt.build.engine import build_engine, choose_backend
from crystal_rt.errors import BackendUnavailable, EngineIncompatible
from crystal_rt.runtime.detector import Detector
from crystal_rt.testing import simulated_gpu

GPU = "cuda:0"
BACKENDS = ("onnxruntime-cuda", "onnxruntime-trt")


def _skip_without_simulation() -> None:
    from crystal_rt.testing import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ort_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from crystal_rt.assets import demo_model

    _skip_without_simulation()
    out = tmp_path_factory.mktemp("ort-gpu")
    with simulated_gpu(tensorrt=False):
        for backend in BACKENDS:
            build_engine(demo_model(), out / backend, backend=backend)
    return {b: out / b for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_pipeline_equals_cpu_pipeline(ort_engines: dict[str, Path], real_images, backend: str) -> None:
    from test_gpu_pipeline import ON_CPU, ON_GPU, assert_same

    with simulated_gpu(tensorrt=False) as gpu, Detector.load(ort_engines[backend]) as det:
        assert det.backend.name == backend
        for path in real_images:
            on_gpu = det.detect(path)
            on_cpu = det.detect(path, stages="cpu")
            assert on_gpu.devices == ON_GPU and on_cpu.devices == ON_CPU
            assert len(on_gpu.instances) > 0
            assert_same(on_gpu, on_cpu)
        assert {"crt_letterbox_normalize_u8", "crt_paste_masks"} <= set(gpu.kernels_launched())
    assert gpu.live_allocations() == {}


def test_manifest_records_provider_versions_and_gpu(ort_engines: dict[str, Path]) -> None:
    from crystal_rt.runtime.artifacts import Manifest, resolve_manifest

    trt = Manifest.read(resolve_manifest(ort_engines["onnxruntime-trt"]))
    assert trt.build_options["provider"] == "TensorrtExecutionProvider"
    options = trt.build_options["provider_options"]
    assert (
        options["trt_engine_cache_enable"] == "True"
        and options["trt_engine_cache_path"] == "crystals.ort-trt-cache"
    )
    assert (
        trt.gpu_name == "crystal-rt simulated GPU"
        and trt.compute_capability == "8.9"
        and trt.cuda_version == "13.0"
    )
    import onnxruntime

    assert trt.backend_version == onnxruntime.__version__
    cuda = Manifest.read(resolve_manifest(ort_engines["onnxruntime-cuda"]))
    assert cuda.build_options["provider"] == "CUDAExecutionProvider"


def test_engine_from_another_gpu_is_refused_with_the_rebuild_command(ort_engines: dict[str, Path]) -> None:
    with simulated_gpu(compute_capability="8.6", tensorrt=False), pytest.raises(EngineIncompatible) as err:
        Detector.load(ort_engines["onnxruntime-cuda"])
    assert "compute 8.9" in err.value.message and "--backend onnxruntime-cuda" in err.value.message


def test_a_provider_that_cannot_load_is_named(ort_engines: dict[str, Path], tmp_path: Path) -> None:
    """ONNX Runtime logs the loader's error and falls back to the CPU quietly; crystal-rt says so."""
    from crystal_rt.assets import demo_model

    broken = {
        "CUDAExecutionProvider": "[E:onnxruntime:Default, provider_bridge_ort.cc:2195 "
        "TryGetProviderInfo_CUDA] Failed to load library libonnxruntime_providers_cuda.so with error: "
        "libcudnn.so.9: cannot open shared object file: No such file or directory"
    }
    with simulated_gpu(tensorrt=False, broken_providers=broken):
        with pytest.raises(BackendUnavailable, match=r"libcudnn\.so\.9 is missing"):
            Detector.load(ort_engines["onnxruntime-cuda"])
        with pytest.raises(BackendUnavailable, match=r"needs CUDAExecutionProvider.*libcudnn\.so\.9"):
            build_engine(demo_model(), tmp_path / "e", backend="onnxruntime-cuda")
    cpu_only = simulated_gpu(tensorrt=False, onnxruntime_providers=())  # a CPU-only onnxruntime
    with cpu_only, pytest.raises(BackendUnavailable, match="install onnxruntime-gpu"):
        build_engine(demo_model(), tmp_path / "f", backend="onnxruntime-trt")


def test_pip_cuda_libraries_are_preloaded_and_missing_ones_named(
    ort_engines: dict[str, Path], tmp_path: Path
) -> None:
    """The gpu-cu* extras bring CUDA and cuDNN as pip wheels, which onnxruntime-gpu finds only after
    onnxruntime.preload_dlls(); without it the CUDA provider falls back to the CPU (and crystal-rt
    refuses). crystal-rt preloads once; where the libraries are not there at all, it names one."""
    from crystal_rt.assets import demo_model
    from crystal_rt.cuda import binding

    cuda_only = {"tensorrt": False, "onnxruntime_providers": ("CUDAExecutionProvider",)}
    with simulated_gpu(**cuda_only), Detector.load(ort_engines["onnxruntime-cuda"]) as det:  # type: ignore[arg-type]
        assert det.backend.name == "onnxruntime-cuda" and binding.onnxruntime_gpu().preloaded
        assert choose_backend("auto")[0] == "onnxruntime-cuda"
    with simulated_gpu(**cuda_only, cuda_libraries="missing"):  # type: ignore[arg-type]
        with pytest.raises(BackendUnavailable, match=r"libcudnn\.so\.9 is missing"):
            Detector.load(ort_engines["onnxruntime-cuda"])
        backend, reason = choose_backend("auto")
        assert backend == "onnxruntime" and "libcudnn.so.9 is missing" in reason
    with simulated_gpu(tensorrt=False, cuda_libraries="system"):  # a system CUDA/cuDNN: no preload needed
        manifest = build_engine(demo_model(), tmp_path / "sys", backend="onnxruntime-cuda")
        assert manifest.backend == "onnxruntime-cuda"


def test_auto_prefers_tensorrt_then_its_provider_then_cuda_then_cpu() -> None:
    _skip_without_simulation()
    with simulated_gpu():
        assert choose_backend("auto")[0] == "tensorrt"
    with simulated_gpu(tensorrt=False):
        backend, reason = choose_backend("auto")
        assert backend == "onnxruntime-trt" and "TensorRT is not installed" in reason
    with simulated_gpu(tensorrt=False, onnxruntime_providers=("CUDAExecutionProvider",)):
        assert choose_backend("auto")[0] == "onnxruntime-cuda"
    with simulated_gpu(tensorrt=False, onnxruntime_providers=()):
        backend, reason = choose_backend("auto")
        assert backend == "onnxruntime" and "install onnxruntime-gpu" in reason


def test_precision_routes_are_refused_in_one_sentence(tmp_path: Path) -> None:
    from crystal_rt.assets import demo_model

    _skip_without_simulation()
    with simulated_gpu(tensorrt=False):
        with pytest.raises(BackendUnavailable, match="does not take INT8"):
            build_engine(demo_model(), tmp_path / "a", backend="onnxruntime-cuda", precision="int8")
        with pytest.raises(BackendUnavailable, match="AutoCast FP16 graph"):
            build_engine(demo_model(), tmp_path / "b", backend="onnxruntime-cuda", precision="fp16")
        manifest = build_engine(demo_model(), tmp_path / "c", backend="onnxruntime-trt", precision="fp16")
        assert manifest.build_options["provider_options"]["trt_fp16_enable"] == "True"


def test_engine_only_inference_uses_the_io_binding(ort_engines: dict[str, Path]) -> None:
    with simulated_gpu(tensorrt=False), Detector.load(ort_engines["onnxruntime-cuda"]) as det:
        out = det.backend.infer(np.zeros((1, 3, 512, 512), np.float32))
        k = det.model.max_detections
        assert out.boxes.shape == (k, 4) and out.masks.shape == (k, 28, 28) and out.masks.dtype == np.float32
        assert det.backend.live_contexts() == 1  # type: ignore[attr-defined]
