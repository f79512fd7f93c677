"""``crystal-rt doctor --gpu``: the acceptance checks only a GPU can answer, as one list of checks.

Kernel half (needs cuda-python, NVRTC, numpy and OpenCV; no TensorRT):
  * every kernel file compiled for the device (NVRTC, ptxas registers and spills);
  * the device stages against the CPU functions on each image (the given real images, and synthetic
    8/16-bit gray/RGB drops of odd sizes): CLAHE pixel for pixel (``apply_clahe``), letterbox +
    normalise (``preprocess``) within 1e-6, the mask paste pixel for pixel (``paste_mask``), in the
    OpenCV arithmetic of this machine (``cuda/flavour.py``);
  * CUDA-event timings (median of ``runs``): CLAHE 8-bit 2048x2048 and 16-bit 1920x1080, letterbox
    2532x2028 -> 512x512, paste of 100 masks.
TensorRT half (where TensorRT is installed): the demo model built FP32 and FP16 (and INT8 from a
given Q/DQ graph), each compared with ONNX Runtime on the CPU (matched box IoU, mask IoU, score
difference) and timed engine-only and end to end (the GPU path), p50/p99.

Every check reports its own failure instead of stopping the others. Runs on the simulated GPU too
(``crystal-rt --simulated-gpu doctor --gpu``), which is how CI checks this module; the numbers there
are the emulator's wall times.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arith import flavour_name, opencv_fma
from ..assets import demo_model
from ..cuda.build import compile_kernel, device_arch, kernel_names, nvrtc_version
from ..cuda.driver import check, ensure_context, synchronize
from ..cuda.driver import driver as cuda_driver
from ..cuda.probe import probe
from ..cuda.timing import EventTimer
from ..runtime.tensorrt import device
from ..runtime.tensorrt.modules import load_tensorrt, tensorrt_installed
from ..spec import PreprocessSpec
from .engine import Precision, build_engine
from .tensorrt.precision import has_fp16_flag

#: synthetic drops checked besides the given images: (height, width, rgb, bit depth)
SYNTHETIC_SHAPES = [
    (1024, 1224, False, 8),
    (600, 801, True, 8),
    (767, 1025, False, 16),
    (333, 517, True, 16),
    (2028, 2532, False, 8),
    (37, 53, True, 8),
]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": len(samples)}


def _fmt(stats: dict[str, float]) -> str:
    return f"p50 {stats['p50']:.3f} ms, p99 {stats['p99']:.3f} ms (n={int(stats['n'])})"


def _guard(name: str, fn: Callable[[], tuple[bool, str, dict[str, Any]]]) -> Check:
    """Run one check; any failure (a CUDA error, a bug) is that check's FAIL, never the report's end."""
    try:
        ok, detail, data = fn()
    except Exception as exc:  # the acceptance report must always be written
        return Check(name, False, _error(exc))
    return Check(name, ok, detail, data)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


#: the timing targets are informational: a first run on a real GPU reports them, nothing fails on them
TIMING_TARGETS = "informational"


def synthetic_images(seed: int = 7) -> list[tuple[str, np.ndarray]]:
    from ..data.synthetic import make_drop

    images = []
    for i, (h, w, rgb, depth) in enumerate(SYNTHETIC_SHAPES):
        kind = f"{'rgb' if rgb else 'gray'}{depth}"
        images.append(
            (f"synthetic-{h}x{w}-{kind}", make_drop(seed + i, h, w, rgb=rgb, bit_depth=depth).image)
        )
    return images


def load_images(folder: Path | None, limit: int = 8) -> list[tuple[str, np.ndarray]]:
    from ..io.decode import list_images, read_image

    if folder is None:
        return []
    return [(p.name, read_image(p)) for p in list_images([folder])[:limit]]


# ---- kernel half --------------------------------------------------------------------------------------


def kernel_build_check() -> Check:
    def run() -> tuple[bool, str, dict[str, Any]]:
        arch = device_arch()
        built = [compile_kernel(name, arch) for name in kernel_names()]
        resources = [r for k in built for r in k.resources]
        spills = sum(r.spills for r in resources)
        data = {
            "arch": built[0].arch if built else arch,
            "kernels": {r.function: {"registers": r.registers, "spill_bytes": r.spills} for r in resources},
        }
        names = ", ".join(k.name for k in built)
        return spills == 0, f"{names} for {data['arch']}, {spills} bytes spilled", data

    return _guard("CUDA kernels build for this GPU", run)


class _Stages:
    """The device stages driven one by one, for the checks and the timings."""

    def __init__(self) -> None:
        from ..cuda.memory import DeviceBuffer

        ensure_context()
        driver = cuda_driver()
        self.stream = check(driver.cuStreamCreate(1), "cuStreamCreate")
        self.timer = EventTimer(self.stream)
        self.src, self.out, self.probs = DeviceBuffer(), DeviceBuffer(), DeviceBuffer()
        self._pre: dict[Any, Any] = {}
        self.paster: Any = None

    def preprocessor(self, spec: Any) -> Any:
        from ..cuda.preprocessor import GpuPreprocessor

        if spec not in self._pre:
            self._pre[spec] = GpuPreprocessor(spec)
        return self._pre[spec]

    def upload(self, pixels: np.ndarray) -> tuple[int, int]:
        data = np.ascontiguousarray(pixels)
        channels = 1 if data.ndim == 2 else 3
        return self.src.upload(data, self.stream), data.shape[1] * channels * data.itemsize

    def close(self) -> None:
        for pre in self._pre.values():
            pre.close()
        if self.paster is not None:
            self.paster.close()
        for buf in (self.src, self.out, self.probs):
            buf.free()
        self.timer.close()
        cuda_driver().cuStreamDestroy(self.stream)


def _download(ptr: int, shape: tuple[int, ...], dtype: Any, stream: Any) -> np.ndarray:
    from ..cuda.memory import download

    dt = np.dtype(dtype)
    array: np.ndarray = download(ptr, int(np.prod(shape)) * dt.itemsize, stream).view(dt).reshape(shape)
    return array


def stage_checks(images: Iterable[tuple[str, np.ndarray]], stages: _Stages) -> list[Check]:
    """Device CLAHE and letterbox against the CPU on every image; paste against the CPU paste. The
    recipes say 16-bit training images, so that 16-bit drops reach the kernels' 16-bit paths (a
    recipe for 8-bit training maps them to 8 bits on the host first)."""
    spec = PreprocessSpec.paper(training_bit_depth=16)
    clahe_rows: dict[str, Any] = {}
    letterbox_rows: dict[str, Any] = {}
    for name, pixels in images:
        try:
            _stage_rows(name, pixels, stages, spec, clahe_rows, letterbox_rows)
        except Exception as exc:  # one image's CUDA error fails that image's rows, not the others
            clahe_rows.setdefault(name, _error(exc))
            letterbox_rows.setdefault(name, _error(exc))
    clahe_bad = {k: v for k, v in clahe_rows.items() if v}
    errors = {k: v for k, v in letterbox_rows.items() if isinstance(v, str)}
    worst = max((v for v in letterbox_rows.values() if not isinstance(v, str)), default=0.0)
    checks = [
        Check(
            "CLAHE on the GPU equals OpenCV",
            not clahe_bad,
            f"{len(clahe_rows)} images, "
            + (f"pixels differ: {clahe_bad}" if clahe_bad else "every pixel equal"),
            {"differing_pixels": clahe_rows},
        ),
        Check(
            "letterbox + normalise on the GPU equals the CPU",
            worst <= 1e-6 and not errors,
            f"{len(letterbox_rows)} images, max |GPU - CPU| {worst:.2e}"
            + (f", failed: {errors}" if errors else ""),
            {"max_abs_diff": letterbox_rows},
        ),
    ]
    checks.append(_guard("mask paste on the GPU equals the CPU", lambda: _paste_check(stages)))
    return checks


def _stage_rows(
    name: str,
    pixels: np.ndarray,
    stages: _Stages,
    spec: PreprocessSpec,
    clahe_rows: dict[str, Any],
    letterbox_rows: dict[str, Any],
) -> None:
    """One image's CLAHE row (pixels that differ) and letterbox row (max |GPU - CPU|)."""
    from ..runtime.preprocess import apply_clahe, preprocess

    size = spec.input_size
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else 3
    pre = stages.preprocessor(spec)
    ptr, pitch = stages.upload(pixels)
    if pre.has_clahe(pixels.dtype, channels):
        out_ptr, out_pitch = pre.clahe_async(ptr, pitch, h, w, pixels.dtype, channels, stages.stream)
        gpu = _download(out_ptr, (h, out_pitch // pixels.itemsize), pixels.dtype, stages.stream)
        gpu = gpu[:, : w * channels].reshape(pixels.shape)
        want = apply_clahe(pixels, spec)
        clahe_rows[name] = int(np.count_nonzero(gpu != want))
        enhanced = want
    else:
        enhanced = apply_clahe(pixels, spec)  # 16-bit RGB: the CPU runs that stage (design note 19)
    ptr, pitch = stages.upload(enhanced)
    out = stages.out.reserve(3 * size * size * 4)
    plain = PreprocessSpec.paper(clahe=False, input_size=size, training_bit_depth=16)
    stages.preprocessor(plain).letterbox_async(ptr, pitch, h, w, enhanced.dtype, channels, out, stages.stream)
    got = _download(out, (1, 3, size, size), np.float32, stages.stream)
    letterbox_rows[name] = float(np.abs(got - preprocess(enhanced, plain).tensor).max())


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    rng = np.random.default_rng(seed)
    probs: np.ndarray = rng.random((n, 28, 28), dtype=np.float32)
    boxes: list[tuple[float, ...]] = []
    for _ in range(n):
        bw, bh = float(rng.uniform(2, 300)), float(rng.uniform(2, 300))
        x1, y1 = float(rng.uniform(-20, w - 10)), float(rng.uniform(-20, h - 10))
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    return probs, boxes


def _paste_check(stages: _Stages) -> tuple[bool, str, dict[str, Any]]:
    from ..cuda.preprocessor import GpuMaskPaster
    from ..runtime.postprocess import paste_mask

    h, w = 2028, 2532
    probs, boxes = _random_masks(100, h, w)
    stages.paster = stages.paster or GpuMaskPaster()
    stages.probs.upload(probs, stages.stream)
    crops = stages.paster(stages.probs.ptr, 28, boxes, h, w, stream=stages.stream)
    differ = 0
    for i, (crop, x0, y0) in enumerate(crops):
        want = paste_mask(probs[i], boxes[i], h, w)
        if crop.shape != want.crop.shape or (crop.size and (x0, y0) != (want.x0, want.y0)):
            differ += crop.size or 1
        else:
            differ += int(np.count_nonzero(crop != want.crop))
    return differ == 0, f"100 masks in a {w}x{h} image, {differ} pixels differ", {"differing_pixels": differ}


def kernel_timings(stages: _Stages, runs: int) -> list[Check]:
    """CUDA-event timings of the stages at the sizes the targets name (medians over ``runs``)."""

    rng = np.random.default_rng(1)
    results: list[Check] = []

    def time_it(name: str, target_ms: float | None, launch: Callable[[], None]) -> None:
        def run() -> tuple[bool, str, dict[str, Any]]:
            launch()  # warm-up (module load, buffers)
            synchronize(stages.stream)
            samples = []
            for _ in range(runs):
                stages.timer.reset()
                stages.timer.start(name)
                launch()
                stages.timer.stop()
                samples.append(stages.timer.elapsed()[name])
            stats = _percentiles(samples)
            note = f" (target <= {target_ms} ms, {TIMING_TARGETS})" if target_ms is not None else ""
            return True, _fmt(stats) + note, {**stats, "target_ms": target_ms, "target": TIMING_TARGETS}

        results.append(_guard(f"time: {name}", run))

    spec = PreprocessSpec()
    for label, shape, dtype, target in (
        ("CLAHE 8-bit 2048x2048", (2048, 2048), np.uint8, 0.1),
        ("CLAHE 16-bit 1920x1080", (1080, 1920), np.uint16, 0.2),
    ):
        top = 255 if dtype == np.uint8 else 65535
        img = rng.integers(0, top + 1, shape, dtype=dtype)
        ptr, pitch = stages.upload(img)

        def clahe(ptr: int = ptr, pitch: int = pitch, img: np.ndarray = img) -> None:
            stages.preprocessor(spec).clahe_async(
                ptr, pitch, img.shape[0], img.shape[1], img.dtype, 1, stages.stream
            )

        time_it(label, target, clahe)
    big = rng.integers(0, 256, (2028, 2532), dtype=np.uint8)
    ptr, pitch = stages.upload(big)
    out = stages.out.reserve(3 * 512 * 512 * 4)
    plain = PreprocessSpec.paper(clahe=False)
    time_it(
        "letterbox 2532x2028 -> 512x512",
        None,
        lambda: stages.preprocessor(plain).letterbox_async(
            ptr, pitch, 2028, 2532, np.uint8, 1, out, stages.stream
        ),
    )
    from ..cuda.launches import paste_layout
    from ..cuda.preprocessor import GpuMaskPaster

    probs, boxes = _random_masks(100, 2028, 2532)
    stages.paster = stages.paster or GpuMaskPaster()
    stages.probs.upload(probs, stages.stream)
    layout = paste_layout(boxes, 2028, 2532)
    time_it(
        "paste of 100 masks",
        None,
        lambda: stages.paster.launch_async(stages.probs.ptr, 28, layout, stages.stream),
    )
    return results


def run_kernel_checks(images: list[tuple[str, np.ndarray]], runs: int = 20) -> list[Check]:
    """The kernel half; a CUDA error anywhere in it is a failed check, and the half still returns."""
    checks = [kernel_build_check()]
    try:
        stages = _Stages()
    except Exception as exc:
        return [*checks, Check("device stages", False, f"could not set up: {_error(exc)}")]
    for name, part in (
        ("device stages against the CPU", lambda: stage_checks(images, stages)),
        ("kernel timings", lambda: kernel_timings(stages, runs)),
    ):
        try:
            checks += part()
        except Exception as exc:
            checks.append(Check(name, False, _error(exc)))
    try:
        stages.close()
    except Exception as exc:
        checks.append(Check("device stages released", False, _error(exc)))
    return checks


# ---- TensorRT half ------------------------------------------------------------------------------------


def engine_checks(
    precision: Precision,
    images: list[tuple[str, np.ndarray]],
    workdir: Path,
    say: Callable[[str], None],
    *,
    source: Path | None = None,
    runs: int = 100,
) -> list[Check]:
    from ..evaluate.parity import Tolerances, compare_detectors
    from ..runtime.detector import Detector

    start = time.perf_counter()
    try:
        manifest = build_engine(
            source or demo_model(), workdir / precision, backend="tensorrt", precision=precision, log=say
        )
    except Exception as exc:  # report and go on: one failed build must not hide the other checks
        return [Check(f"build {precision}", False, f"{type(exc).__name__}: {str(exc)[:300]}")]
    seconds = time.perf_counter() - start
    checks = [Check(f"build {precision}", True, f"{manifest.engine_bytes / 1e6:.1f} MB in {seconds:.1f} s",
                    {"bytes": manifest.engine_bytes, "seconds": seconds})]  # fmt: skip
    try:
        reference = Detector.from_onnx(demo_model())
        engine_dir = manifest.path or workdir / precision
        engine_cm = Detector.load(engine_dir)
    except Exception as exc:
        return [*checks, Check(f"load {precision}", False, _error(exc))]
    with engine_cm as engine:
        loose = precision != "fp32"
        tol = Tolerances(
            box_iou=0.85 if loose else 0.95, mask_iou=0.8 if loose else 0.9, score=0.05 if loose else 0.01
        )

        def parity() -> tuple[bool, str, dict[str, Any]]:
            report = compare_detectors(
                reference, engine, images, score_threshold=reference.model.score_threshold, tolerances=tol
            )
            s = report.summary()
            detail = (
                f"matched {s['matched']}/{s['reference_detections']}, min box IoU {s['min_box_iou']:.3f}, "
                f"min mask IoU {s['min_mask_iou']:.3f}, max score diff {s['max_score_diff']:.3f}"
            )
            return report.ok, detail if report.ok else f"{detail}; {report.failures[0][:200]}", dict(s)

        checks.append(_guard(f"parity {precision} vs ONNX Runtime CPU", parity))

        def engine_latency() -> tuple[bool, str, dict[str, Any]]:
            tensor = np.zeros((1, 3, *engine.preprocess.input_hw), np.float32)
            for _ in range(min(10, runs)):
                engine.backend.infer(tensor)
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                engine.backend.infer(tensor)
                samples.append((time.perf_counter() - t) * 1e3)
            stats = _percentiles(samples)
            return True, _fmt(stats), stats

        def end_to_end() -> tuple[bool, str, dict[str, Any]]:
            samples, devices = [], {}
            for _ in range(max(1, runs // 30)):
                for name, pixels in images:
                    t = time.perf_counter()
                    devices = engine.detect_pixels(pixels, name=name).devices
                    samples.append((time.perf_counter() - t) * 1e3)
            stats = _percentiles(samples)
            return True, f"{_fmt(stats)}, stages on {devices.get('paste')}", {**stats, "devices": devices}

        checks.append(_guard(f"latency {precision} engine only (H2D+run+D2H)", engine_latency))
        checks.append(_guard(f"latency {precision} end to end (GPU path, decode excluded)", end_to_end))
    return checks


def run_gpu_checks(
    images: list[tuple[str, np.ndarray]],
    say: Callable[[str], None],
    work: Path | None = None,
    *,
    runs: int = 20,
    int8_graph: Path | None = None,
) -> list[Check]:
    """The kernel half, then the TensorRT half where TensorRT is installed."""

    say("checking the CUDA kernels")
    try:
        checks = run_kernel_checks(images, runs)
    except Exception as exc:  # never let the kernel half skip the TensorRT half
        checks = [Check("CUDA kernels", False, _error(exc))]
    if not tensorrt_installed():
        checks.append(Check("TensorRT", True, "not installed: the engine checks are skipped"))
        return checks
    trt = load_tensorrt("crystal-rt doctor --gpu")
    precisions: list[Precision] = ["fp32", "fp16"] if has_fp16_flag(trt) else ["fp32"]
    with tempfile.TemporaryDirectory(prefix="crystal-rt-doctor-") as tmp:
        for precision in precisions:
            say(f"building and checking the demo engine ({precision})")
            checks += engine_checks(precision, images, work or Path(tmp), say, runs=5 * runs)
        if int8_graph is not None:
            checks += engine_checks("int8", images, work or Path(tmp), say, source=int8_graph, runs=5 * runs)
    if "fp16" not in precisions:
        checks.append(Check("build fp16", True, "skipped: this TensorRT builds FP16 from an AutoCast graph"))
    return checks


def report(checks: list[Check], seconds: float) -> dict[str, Any]:
    """The JSON report: the machine, every check, and whether all passed."""

    def safe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # the report is written whatever the machine cannot answer
            return f"unavailable ({_error(exc)})"

    def gpu() -> Any:
        found = device.gpu()
        return asdict(found) if found else None

    return {
        "ok": bool(checks) and all(c.ok for c in checks),
        "seconds": round(seconds, 1),
        "gpu": safe(gpu),
        "driver": safe(lambda: probe().message),
        "nvrtc": safe(lambda: ".".join(map(str, nvrtc_version()))),
        "tensorrt": safe(device.tensorrt_version),
        "opencv_arithmetic": safe(lambda: flavour_name(opencv_fma())),
        "timing_targets": TIMING_TARGETS,
        "checks": [asdict(c) for c in checks],
    }
