"""TensorRT build and run rules checked on the simulated GPU (crystal_rt.testing): FP32 without TF32,
version-compatible plans that carry their plugins, and one-sentence messages for the faults of real
machines (no GPU vs an unusable one, NVRTC newer than the driver, out of memory, TensorRT that cannot
start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crystal_rt.build.engine import BuildOptions, build_engine
from crystal_rt.errors import BackendUnavailable, CudaError
from crystal_rt.runtime.detector import Detector
from crystal_rt.testing import simulated_gpu
from crystal_rt.testing.sim_tensorrt import read_plan


@pytest.fixture
def demo_onnx() -> Path:
    from crystal_rt.assets import demo_model

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


def test_weak_fp16_keeps_box_nms_and_roialign_in_fp32(
    sim_gpu, demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BuilderFlag.FP16 (TensorRT 10.x) lets TensorRT choose FP16 for any layer; the contract keeps box
    maths in FP32: every box, TopK/NMS and RoiAlign layer is pinned under OBEY_PRECISION_CONSTRAINTS,
    and the simulated builder refuses a build that leaves one free."""
    from crystal_rt.build.tensorrt import builder
    from crystal_rt.errors import BuildError

    manifest = build_engine(demo_onnx, tmp_path / "fp16", backend="tensorrt", precision="fp16")
    header = _header(tmp_path / "fp16")
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(header["flags"]) and header["fp32_pinned"] > 100
    route = manifest.build_options["precision_route"]
    assert route["fp32_pinned"].startswith("every layer outside /backbone/")
    monkeypatch.setattr(builder, "pin_box_layers", lambda trt, network: [])  # planted: nothing pinned
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "fresh-cache"))  # no cached plan to reuse
    with pytest.raises(BuildError, match=r"box, NMS or RoiAlign layers may run in FP16"):
        build_engine(demo_onnx, tmp_path / "free", backend="tensorrt", precision="fp16")


def test_version_compatible_plan_carries_roialign(
    demo_onnx: Path, real_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--version-compatible: the plan runs on TensorRT's lean runtime, which does not see the plugin
    registry, so the RoiAlign plugin library must be serialized into it (as trtexec does)."""
    from crystal_rt.build.tensorrt import builder

    vc = BuildOptions(version_compatible=True)
    with simulated_gpu() as gpu:
        manifest = build_engine(demo_onnx, tmp_path / "vc", backend="tensorrt", tensorrt=vc)
        # trtexec's sequence: the parser's VC plugin libraries also go into the builder's registry
        assert gpu.tensorrt.simulation.loaded_libraries("builder") == ["libnvinfer_vc_plugin.so"]
    assert manifest.build_options["serialized_plugins"] == ["libnvinfer_vc_plugin.so"]
    assert _header(tmp_path / "vc")["plugins_serialized"] == ["libnvinfer_vc_plugin.so"]
    # it loads on its own TensorRT and on TensorRT 11 (10 -> 11 is allowed for version-compatible plans)
    for version in ("10.16.0.sim", "11.1.0.sim"):
        with simulated_gpu(tensorrt_version=version) as gpu, Detector.load(tmp_path / "vc") as det:
            assert len(det.detect(real_images[0]).instances) > 0
            # and into the runtime's, as trtexec does at inference time (--dynamicPlugins)
            assert gpu.tensorrt.simulation.loaded_libraries("runtime") == ["libnvinfer_vc_plugin.so"]
    # built as before the fix (flag only, no plugins serialized): the plan does not load
    monkeypatch.setattr(builder, "serialize_vc_plugins", lambda config, parser, builder=None: [])
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "other-cache"))  # not the cached good plan
    with simulated_gpu():
        build_engine(demo_onnx, tmp_path / "bare", backend="tensorrt", tensorrt=vc)
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
    from crystal_rt.cuda import build, module
    from crystal_rt.cuda.module import Module

    monkeypatch.setattr(
        module, "nvrtc_mismatch", lambda driver, nvrtc, ptx=False, integrated=False: None
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


def test_ended_threads_give_their_context_back(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    """A service's pool replaces threads: the contexts, streams and buffers of ended threads are freed
    (when the next thread starts), and close() from another thread frees the rest."""
    import threading

    with Detector.load(demo_trt_engine) as det:
        backend = det.backend
        for _ in range(3):
            worker = threading.Thread(target=lambda: det.detect(real_images[2]))
            worker.start()
            worker.join()
        assert backend.live_contexts() == 1  # type: ignore[attr-defined]  # each new thread freed the last
        streams_before = len(sim_gpu.driver.live_streams())
        assert streams_before == 1
        det.detect(real_images[2])  # this thread: the ended one's state is freed
        assert backend.live_contexts() == 1  # type: ignore[attr-defined]
        closer = threading.Thread(target=det.close)  # close() works from any thread
        closer.start()
        closer.join()
    assert sim_gpu.live_allocations() == {} and sim_gpu.driver.live_streams() == []


def test_jetson_contexts_share_one_activation_memory(demo_trt_engine: Path, real_images) -> None:
    """On an integrated GPU (Jetson) the threads' contexts share one activation memory and take turns
    running the engine; elsewhere each context has its own."""
    from concurrent.futures import ThreadPoolExecutor

    from crystal_rt.testing.sim_tensorrt import ExecutionContextAllocationStrategy

    with simulated_gpu(integrated=True), Detector.load(demo_trt_engine) as det:
        backend = det.backend
        assert backend.shares_activations  # type: ignore[attr-defined]
        expected = det.detect(real_images[0]).to_dict()["instances"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: det.detect(real_images[0]).to_dict()["instances"], range(8)))
        assert all(r == expected for r in results)
        strategies = {s.handle.strategy for s in backend._states}  # type: ignore[attr-defined]
        assert strategies == {ExecutionContextAllocationStrategy.USER_MANAGED}
    with simulated_gpu(), Detector.load(demo_trt_engine) as det:
        assert not det.backend.shares_activations  # type: ignore[attr-defined]


def _fp16_io_core(path: Path, size: int = 32, k: int = 4) -> Path:
    """A core-graph-shaped ONNX whose input and float outputs are float16 (an AutoCast graph made
    without keep_io_types): constant detections, the score nudged by the input so it is read."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from crystal_rt.spec import MODEL_METADATA_KEY, SPEC_METADATA_KEY, ModelSpec, PreprocessSpec

    boxes = np.array([[2, 2, 20, 12], [8, 4, 30, 28], [0, 0, 0, 0], [0, 0, 0, 0]], np.float16)
    scores = np.array([0.9, 0.8, 0.0, 0.0], np.float16)
    inits = [
        numpy_helper.from_array(boxes, "boxes_c"),
        numpy_helper.from_array(scores, "scores_c"),
        numpy_helper.from_array(np.array([1, 1, 0, 0], np.int64), "labels"),
        numpy_helper.from_array(np.full((k, 28, 28), 0.75, np.float16), "masks_c"),
        numpy_helper.from_array(np.array(0.0, np.float16), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nudge"]),
        helper.make_node("Add", ["scores_c", "nudge"], ["scores"]),
        helper.make_node("Identity", ["boxes_c"], ["boxes"]),
        helper.make_node("Identity", ["masks_c"], ["masks"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16io",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT16, [k, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT16, [k]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [k]),
            helper.make_tensor_value_info("masks", TensorProto.FLOAT16, [k, 28, 28]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (
        (SPEC_METADATA_KEY, PreprocessSpec.paper(input_size=size).to_json()),
        (MODEL_METADATA_KEY, ModelSpec(arch="fp16io", num_classes=2, max_detections=k).to_json()),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_fp16_io_plan_is_converted_on_the_host(sim_gpu, tmp_path: Path) -> None:
    """Float16 input/outputs: the device stages (which write and read float32) step aside; the host
    converts, and the detections are right instead of float32 garbage."""
    import numpy as np

    core = _fp16_io_core(tmp_path / "fp16io.onnx")
    build_engine(core, tmp_path / "e", backend="tensorrt")
    with Detector.load(tmp_path / "e") as det:
        assert det.backend.dtypes["images"] == np.float16  # type: ignore[attr-defined]
        result = det.detect_pixels(np.full((64, 64), 100, np.uint8), score_threshold=0.5)
    assert result.devices["engine"] == "cuda:0" and result.devices["paste"] == "cpu"
    assert [round(i.score, 3) for i in result.instances] == [0.9, 0.8]
    assert result.instances[0].box == (4.0, 4.0, 40.0, 24.0)  # network pixels / letterbox scale 0.5


def test_a_failure_quotes_its_own_threads_log(sim_gpu) -> None:
    """The TensorRT logger is one per process; what one thread's failed call quotes is what TensorRT
    logged on that thread, never another thread's lines logged at the same time."""
    import threading

    from crystal_rt.runtime.tensorrt.trtlog import get_logger, summarize

    trt = sim_gpu.tensorrt
    logger = get_logger(trt)
    mark = logger.mark()
    logger.log(trt.ILogger.Severity.ERROR, "mine: enqueue failed")
    other = threading.Thread(target=lambda: logger.log(trt.ILogger.Severity.ERROR, "theirs: build failed"))
    other.start()
    other.join()
    assert logger.since(mark) == ["[ERROR] mine: enqueue failed"]
    assert "theirs" not in summarize(logger.since(mark))
