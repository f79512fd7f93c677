"""TensorRT build and run rules checked on the simulated GPU (crystal_rt.testing): FP32 without TF32,
version-compatible plans that carry their plugins, and one-sentence messages for the faults of real
machines (no GPU vs an unusable one, NVRTC newer than the driver, out of memory, TensorRT that cannot
start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crystal_rt.errors import BackendUnavailable, CudaError
from crystal_rt.runtime.build import build_engine
from crystal_rt.runtime.detector import Detector
from crystal_rt.testing import simulated_gpu
from crystal_rt.testing.sim_tensorrt import read_plan


@pytest.fixture
def demo_onnx() -> Path:
    from crystal_rt.cli.demo import demo_model

    return demo_model()


def _header(engine_dir: Path) -> dict:
    parsed = read_plan((engine_dir / "crystals.plan").read_bytes())
    assert parsed is not None
    return parsed[0]


def test_fp32_clears_tf32_fp16_sets_its_flag(sim_gpu, demo_onnx: Path, tmp_path: Path) -> None:
    fp32 = build_engine(demo_onnx, tmp_path / "fp32", backend="tensorrt", precision="fp32")
    assert "TF32" not in _header(tmp_path / "fp32")["flags"]  # TensorRT sets it by default
    assert fp32.build_options["precision_route"]["cleared_flags"] == ["TF32"]
    build_engine(demo_onnx, tmp_path / "fp16", backend="tensorrt", precision="fp16")
    assert "FP16" in _header(tmp_path / "fp16")["flags"]


def test_version_compatible_plan_carries_roialign(
    demo_onnx: Path, real_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--version-compatible: the plan runs on TensorRT's lean runtime, which does not see the plugin
    registry, so the RoiAlign plugin library must be serialized into it (as trtexec does)."""
    from crystal_rt.runtime.tensorrt import builder

    vc = {"version_compatible": True}
    with simulated_gpu():
        manifest = build_engine(demo_onnx, tmp_path / "vc", backend="tensorrt", tensorrt_options=vc)
    assert manifest.build_options["serialized_plugins"] == ["libnvinfer_vc_plugin.so"]
    assert _header(tmp_path / "vc")["plugins_serialized"] == ["libnvinfer_vc_plugin.so"]
    # it loads on its own TensorRT and on TensorRT 11 (10 -> 11 is allowed for version-compatible plans)
    for version in ("10.16.0.sim", "11.1.0.sim"):
        with simulated_gpu(tensorrt_version=version), Detector.load(tmp_path / "vc") as det:
            assert len(det.detect(real_images[0]).instances) > 0
    # built as before the fix (flag only, no plugins serialized): the plan does not load
    monkeypatch.setattr(builder, "serialize_vc_plugins", lambda config, parser: [])
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "other-cache"))  # not the cached good plan
    with simulated_gpu():
        build_engine(demo_onnx, tmp_path / "bare", backend="tensorrt", tensorrt_options=vc)
    from crystal_rt.errors import EngineIncompatible

    with simulated_gpu(), pytest.raises(EngineIncompatible, match="IPluginCreator not found"):
        Detector.load(tmp_path / "bare")


def test_gpu_present_but_unusable_is_not_no_gpu(sim_gpu, demo_onnx: Path, tmp_path: Path) -> None:
    from crystal_rt.cuda.probe import probe

    sim_gpu.fail_next("cuInit", "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", times=10)
    state = probe()
    assert state.present and not state.usable and "kernel module" in state.message
    with pytest.raises(BackendUnavailable, match=r"present but unusable.*--backend onnxruntime"):
        build_engine(demo_onnx, tmp_path / "e")  # --backend auto must not quietly pick the CPU
    sim_gpu.driver._failures.clear()
    sim_gpu.fail_next("cuInit", "CUDA_ERROR_NO_DEVICE", times=10)
    assert probe().status == "no_device"
    manifest = build_engine(demo_onnx, tmp_path / "cpu")  # no GPU: the CPU engine, as before
    assert manifest.backend == "onnxruntime"


def test_nvrtc_newer_than_the_driver_names_the_extra(demo_trt_engine: Path, real_images) -> None:
    """A CUDA 12.6 driver (JetPack 6) with NVRTC 13: the kernels would not load; one sentence says
    which extra to install, before anything is compiled."""
    expected = r"driver supports CUDA 12\.6.*crystal-rt\[gpu-cu12\]"
    with (
        simulated_gpu(driver_version=12060),
        Detector.load(demo_trt_engine) as det,
        pytest.raises(BackendUnavailable, match=expected),
    ):
        det.detect(real_images[0])


def test_ptx_the_driver_cannot_load_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU newer than NVRTC knows gets PTX (compute_121 for a "12.2"); a CUDA 12.6 driver cannot JIT
    NVRTC 13's PTX, and the error says which versions disagree."""
    from crystal_rt.cuda import build, probe
    from crystal_rt.cuda.launch import Module

    monkeypatch.setattr(
        probe, "nvrtc_mismatch", lambda driver, nvrtc, ptx=False: None
    )  # get past the early check
    with simulated_gpu(compute_capability="12.2", driver_version=12060):
        assert build.target_for(build.device_arch()) == "compute_121"
        with pytest.raises(CudaError, match=r"UNSUPPORTED_PTX_VERSION.*NVRTC 13\.\d+ built compute_121"):
            Module("paste")


def test_out_of_memory_names_what_was_asked_and_free(demo_trt_engine: Path, real_images) -> None:
    with (
        simulated_gpu(memory_bytes=6 << 20),
        Detector.load(demo_trt_engine) as det,
        pytest.raises(CudaError, match=r"out of GPU memory: asked for [\d.]+ MiB; [\d.]+ MiB of 6 MiB are"),
    ):
        det.detect(real_images[0])  # the engine's 3.5 MB of I/O fit, a 1224x1024 RGB image does not


def test_tensorrt_that_cannot_start_is_one_sentence(
    sim_gpu, demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "cache"))  # a real build, not a cache hit
    trt = sim_gpu.tensorrt
    assert trt is not None

    def broken(logger: object) -> object:
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt.Builder = broken  # what TensorRT does when its CUDA initialisation fails (error 35)
    with pytest.raises(BackendUnavailable, match=r"could not create its builder.*nullptr"):
        build_engine(demo_onnx, tmp_path / "e", backend="tensorrt")
