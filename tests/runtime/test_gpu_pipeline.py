"""The GPU pipeline (device CLAHE, letterbox, TensorRT engine, paste) against the CPU pipeline, on the
simulated GPU (crystal_rt.testing): the same detections, boxes within 1e-4 px, scores within 1e-6,
masks pixel for pixel; per-stage devices; per-stage fallback; threads; errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.errors import CrystalRtError, CudaError, InvalidImage, InvalidSpec
from crystal_rt.results.detection import DetectionResult
from crystal_rt.runtime.detector import Detector

GPU = "cuda:0"


def assert_same(gpu: DetectionResult, cpu: DetectionResult) -> None:
    assert len(gpu.instances) == len(cpu.instances), (gpu.image, len(gpu.instances), len(cpu.instances))
    for a, b in zip(gpu.instances, cpu.instances, strict=True):
        assert a.label == b.label
        assert abs(a.score - b.score) <= 1e-6
        assert np.abs(np.subtract(a.box, b.box)).max() <= 1e-4
        assert (a.mask.x0, a.mask.y0) == (b.mask.x0, b.mask.y0)
        assert a.mask.crop.shape == b.mask.crop.shape
        assert np.array_equal(a.mask.crop, b.mask.crop)


def _drops() -> list[tuple[str, np.ndarray]]:
    from crystal_rt.data.synthetic import make_drop

    cases = []
    shapes = [(600, 801, False, 8), (483, 517, True, 8), (767, 1025, False, 16), (333, 701, True, 16)]
    for i, (h, w, rgb, depth) in enumerate([*shapes, (16, 97, False, 8), (2028, 2532, False, 16)]):
        drop = make_drop(40 + i, h, w, rgb=rgb, bit_depth=depth)
        cases.append((f"drop-{h}x{w}-{'rgb' if rgb else 'gray'}{depth}", drop.image))
    rng = np.random.default_rng(3)
    cases.append(("1x1-gray8", np.full((1, 1), 130, np.uint8)))
    cases.append(("1x1-rgb16", rng.integers(0, 65535, (1, 1, 3), dtype=np.uint16)))
    cases.append(("7x3-gray16", rng.integers(0, 65535, (7, 3), dtype=np.uint16)))
    return cases


ON_GPU = {"decode": "cpu", "clahe": GPU, "letterbox": GPU, "engine": GPU, "paste": GPU}
ON_CPU = {"decode": "cpu", "clahe": "cpu", "letterbox": "cpu", "engine": GPU, "paste": "cpu"}


def test_gpu_pipeline_equals_cpu_on_real_images(
    sim_gpu, demo_trt_engine: Path, real_images: list[Path]
) -> None:
    with Detector.load(demo_trt_engine) as det:
        for path in real_images:
            gpu = det.detect(path)
            cpu = det.detect(path, stages="cpu")
            assert gpu.devices == ON_GPU and cpu.devices == ON_CPU
            assert len(gpu.instances) > 0
            assert_same(gpu, cpu)
    kernels = set(sim_gpu.kernels_launched())
    assert {"clahe_hist_lut_u8", "clahe_apply_u8", "crt_letterbox_normalize_u8", "crt_paste_masks"} <= kernels
    assert {"rgb_to_lab_u8", "lab_to_rgb_u8"} <= kernels  # two of the real images are RGB
    assert sim_gpu.live_allocations() == {}, "close() frees every device and page-locked buffer"


@pytest.mark.parametrize("training_bit_depth", [8, 16])
def test_gpu_pipeline_equals_cpu_on_synthetic_drops(
    sim_gpu, demo_trt_engine: Path, training_bit_depth: int
) -> None:
    """The demo model was trained on 8-bit images: 16-bit images are mapped to 8 bits on the host,
    before the upload, and the 8-bit kernels run; a recipe of a model trained on 16-bit images runs
    the 16-bit kernels."""
    with Detector.load(demo_trt_engine) as det:
        det.preprocess = det.preprocess.with_overrides(training_bit_depth=training_bit_depth)
        for name, pixels in _drops():
            gpu = det.detect_pixels(pixels, name=name, score_threshold=0.3)
            cpu = det.detect_pixels(pixels, name=name, score_threshold=0.3, stages="cpu")
            assert_same(gpu, cpu)
            rgb16 = pixels.ndim == 3 and pixels.dtype == np.uint16 and training_bit_depth == 16
            # 16-bit RGB CLAHE has no kernel: that stage alone runs on the CPU
            assert gpu.devices["clahe"] == ("cpu" if rgb16 else GPU), name
            assert gpu.devices["letterbox"] == gpu.devices["paste"] == GPU
    kernels = set(sim_gpu.kernels_launched())
    sixteen = {k for k in kernels if "u16" in k}
    assert bool(sixteen) == (training_bit_depth == 16), sorted(kernels)


def test_gpu_pipeline_equals_onnxruntime_engine(
    sim_gpu, demo_trt_engine: Path, demo_ort_engine: Path, real_images
) -> None:
    with Detector.load(demo_trt_engine) as trt, Detector.load(demo_ort_engine) as ort:
        for path in real_images[:2]:
            assert_same(trt.detect(path), ort.detect(path))


def test_clahe_off_is_skipped_on_every_path(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    with Detector.load(demo_trt_engine) as det:
        det.preprocess = det.preprocess.with_overrides(clahe=False)
        gpu = det.detect(real_images[0])
        cpu = det.detect(real_images[0], stages="cpu")
        assert gpu.devices["clahe"] == cpu.devices["clahe"] == "skipped"
        assert_same(gpu, cpu)
    assert "clahe_apply_u8" not in sim_gpu.kernels_launched()


def test_gpu_stage_timings_come_from_events(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    with Detector.load(demo_trt_engine) as det:
        result = det.detect(real_images[0])
    t = result.timings_ms
    assert all(t[stage] > 0 for stage in ("clahe", "letterbox", "engine", "paste"))
    assert t["total"] >= t["decode"] + t["clahe"] + t["letterbox"] + t["engine"]


def test_eight_threads_share_one_detector(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    with Detector.load(demo_trt_engine) as det:
        expected = {p.name: det.detect(p).to_dict() for p in real_images}

        def one(i: int) -> tuple[str, dict]:
            path = real_images[i % len(real_images)]
            result = det.detect(path).to_dict()
            return path.name, result

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(16)))
    for name, result in results:
        for key in ("instances", "num_instances", "devices"):
            assert result[key] == expected[name][key]
    assert sim_gpu.live_allocations() == {}, "every thread's buffers are freed by close()"


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((20, 30, 4), np.uint8),  # RGBA array: the GPU path used to take it with the wrong pitch
        np.zeros((20, 30, 2), np.uint8),
        np.zeros((20, 30), np.float32),
        np.zeros((0, 30), np.uint8),
        np.zeros((5,), np.uint8),
    ],
    ids=["rgba", "two-channel", "float32", "empty", "1-d"],
)
def test_bad_arrays_give_the_cpu_paths_error(sim_gpu, demo_trt_engine: Path, pixels: np.ndarray) -> None:
    with Detector.load(demo_trt_engine) as det:
        with pytest.raises(InvalidImage) as gpu_error:
            det.detect_pixels(pixels, name="bad")
        with pytest.raises(InvalidImage) as cpu_error:
            det.detect_pixels(pixels, name="bad", stages="cpu")
    assert gpu_error.value.message == cpu_error.value.message
    assert sim_gpu.kernels_launched() == []


def test_bad_options_are_refused(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    with Detector.load(demo_trt_engine) as det:
        with pytest.raises(InvalidSpec, match="stages"):
            det.detect(real_images[0], stages="gpu")  # type: ignore[arg-type]
        with pytest.raises(InvalidSpec, match="score_threshold"):
            det.detect(real_images[0], score_threshold=1.5)
    with pytest.raises(InvalidSpec, match="stages"):
        Detector.load(demo_trt_engine, stages="fast")  # type: ignore[arg-type]
    det.close()
    with pytest.raises(CrystalRtError, match="closed"):
        det.detect(real_images[0])


def test_a_failing_cuda_call_fails_one_request(sim_gpu, demo_trt_engine: Path, real_images) -> None:
    with Detector.load(demo_trt_engine) as det:
        first = det.detect(real_images[1])
        sim_gpu.fail_next("cuLaunchKernel", "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        with pytest.raises(CudaError, match="LAUNCH_OUT_OF_RESOURCES"):
            det.detect(real_images[1])
        assert det.detect(real_images[1]).to_dict()["instances"] == first.to_dict()["instances"]
        sim_gpu.fail_next("cuMemcpyHtoDAsync", "CUDA_ERROR_INVALID_VALUE")
        with pytest.raises(CudaError, match="cuMemcpyHtoDAsync"):
            det.detect(real_images[1])
        assert det.detect(real_images[1]).to_dict()["instances"] == first.to_dict()["instances"]


def test_plan_loads_in_a_process_that_never_built_one(demo_trt_engine: Path, real_images) -> None:
    """A fresh interpreter: no builder ran there, so only the backend can have registered the plugins."""
    code = textwrap.dedent(
        f"""
        from crystal_rt import Detector
        from crystal_rt.testing import simulated_gpu
        with simulated_gpu():
            with Detector.load({str(demo_trt_engine)!r}) as det:
                r = det.detect({str(real_images[0])!r})
                print("OK", len(r.instances), r.devices["engine"])
        """
    )
    argv = [sys.executable, "-c", code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "OK" and int(proc.stdout.split()[1]) > 0


def test_without_plugin_registration_the_plan_does_not_load(
    sim_gpu, demo_trt_engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule the simulated TensorRT keeps (and the defect the backend fixes): a plan using
    ROIAlign_TRT does not deserialize before init_libnvinfer_plugins in this process."""
    from crystal_rt.errors import EngineIncompatible
    from crystal_rt.runtime.tensorrt import backend

    monkeypatch.setattr(backend, "init_plugins", lambda trt, logger: None)
    with pytest.raises(EngineIncompatible, match="IPluginCreator not found"):
        Detector.load(demo_trt_engine)


@pytest.mark.slow  # heavy: runs in make test-all / CI, not in a plain pytest
@pytest.mark.parametrize("paste_at", ["image", "resize"])
def test_recipes_the_kernels_do_not_compute_run_engine_and_paste_on_the_device(
    sim_gpu, tiny, tmp_path: Path, real_images, paste_at: str
) -> None:
    """A CHiMP-shaped recipe (stretch, CLAHE after it, min-max, the model's own transform, a
    non-square input): the CPU makes the engine input, the device runs the engine and the paste, and
    the result equals the CPU stages'."""
    pytest.importorskip("torch")
    from crystal_rt.build.engine import build_engine
    from crystal_rt.export.onnx_export import export_core_onnx
    from crystal_rt.models.maskrcnn import load_checkpoint
    from crystal_rt.spec import Clahe, Intensity, ModelTransform, PreprocessSpec, Resize

    recipe = PreprocessSpec(
        (Resize("stretch", 240, 300), Clahe(2.5, (6, 6)), Intensity("minmax"), ModelTransform(192, 320)),
        paste_at=paste_at,  # type: ignore[arg-type]
        color="rgb",
    )
    assert recipe.input_hw == (192, 256) and not recipe.is_paper_shaped
    onnx_path = export_core_onnx(
        load_checkpoint(tiny.checkpoint, preprocess=recipe), tmp_path / "m.onnx"
    ).path
    build_engine(onnx_path, tmp_path / "engine", backend="tensorrt")
    with Detector.load(tmp_path / "engine", score_threshold=0.05) as det:
        assert det.preprocess == recipe
        for path in real_images[:2]:
            gpu, cpu = det.detect(path), det.detect(path, stages="cpu")
            assert gpu.devices == {
                "decode": "cpu", "clahe": "cpu", "letterbox": "cpu", "engine": "cuda:0", "paste": "cuda:0"
            }  # fmt: skip
            assert cpu.devices["paste"] == "cpu" and len(gpu) > 0
            assert_same(gpu, cpu)
    assert "crt_paste_masks" in sim_gpu.kernels_launched()
    assert "crt_letterbox_normalize_u8" not in sim_gpu.kernels_launched()


def test_first_image_times_no_compile_or_module_load(
    sim_gpu, demo_trt_engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first image on a thread compiles (NVRTC) and loads the kernel modules: that happens before a
    stage's CUDA events, so it is not reported as GPU time of CLAHE, letterbox or paste."""
    from crystal_rt.cuda import timing

    open_stage: list[str] = []
    loads_inside: list[str] = []
    start, stop = timing.EventTimer.start, timing.EventTimer.stop

    def spy_start(self: timing.EventTimer, stage: str) -> None:
        open_stage.append(stage)
        start(self, stage)

    def spy_stop(self: timing.EventTimer) -> None:
        stop(self)
        open_stage.pop()

    real_load = sim_gpu.driver.cuModuleLoadData

    def spy_load(image: object) -> object:
        if open_stage:
            loads_inside.append(open_stage[-1])
        return real_load(image)

    monkeypatch.setattr(timing.EventTimer, "start", spy_start)
    monkeypatch.setattr(timing.EventTimer, "stop", spy_stop)
    monkeypatch.setattr(sim_gpu.driver, "cuModuleLoadData", spy_load)
    from crystal_rt.data.synthetic import make_drop

    with Detector.load(demo_trt_engine) as det:
        result = det.detect_pixels(make_drop(5, 300, 400).image)
    assert result.devices == ON_GPU and not open_stage
    assert loads_inside == [], f"module loads timed as GPU work of {sorted(set(loads_inside))}"


def test_close_releases_the_context_engine_and_runtime(sim_gpu, demo_trt_engine: Path) -> None:
    """After Detector.close() (used from four threads) nothing of it is left on the GPU: no memory, no
    TensorRT runtime, engine or execution context, and no retain of the primary context; a Detector
    opened afterwards runs on the same threads."""
    import gc

    from crystal_rt.data.synthetic import make_drop

    image = make_drop(6, 200, 260).image
    with ThreadPoolExecutor(4) as pool:
        det = Detector.load(demo_trt_engine)
        list(pool.map(lambda _: det.detect_pixels(image), range(8)))
        assert sim_gpu.primary_context_refs() == 1  # one per process, not one per thread
        det.close()
        det.close()  # a second close does nothing
        gc.collect()
        assert sim_gpu.tensorrt_objects() == {} and sim_gpu.live_allocations() == {}
        assert sim_gpu.primary_context_refs() == 0
        with Detector.load(demo_trt_engine) as again:  # the threads' current context was destroyed
            results = list(pool.map(lambda _: again.detect_pixels(image), range(8)))
        assert all(r.devices == ON_GPU for r in results)
    gc.collect()
    assert sim_gpu.tensorrt_objects() == {} and sim_gpu.primary_context_refs() == 0
