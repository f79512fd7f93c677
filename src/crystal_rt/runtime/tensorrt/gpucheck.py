"""``crystal-rt doctor --gpu``: what can only be checked on a GPU, as one list of pass/fail checks.

Builds the demo engine (FP32, and FP16 where the builder flag exists), runs the CLAHE/letterbox and
paste kernels against the CPU reference, compares each engine with ONNX Runtime on the CPU
(matched IoU, :mod:`crystal_rt.evaluate.parity`) and times engine-only and end-to-end latency.

UNVERIFIED: written without a GPU; every step reports its own failure instead of stopping the rest.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _percentiles(samples: list[float]) -> str:
    arr = np.asarray(samples)
    return f"p50 {np.percentile(arr, 50):.2f} ms, p99 {np.percentile(arr, 99):.2f} ms (n={len(samples)})"


def _guard(name: str, fn: Callable[[], str | tuple[bool, str]]) -> Check:
    from ...errors import CrystalRtError

    try:
        result = fn()
    except (CrystalRtError, RuntimeError, ValueError, OSError, AssertionError) as exc:
        return Check(name, False, f"{type(exc).__name__}: {str(exc)[:200]}")
    ok, detail = result if isinstance(result, tuple) else (True, result)
    return Check(name, ok, detail)


def synthetic_images(count: int = 4, seed: int = 7) -> list[tuple[str, np.ndarray]]:
    from ...data.synthetic import make_drop

    shapes = [(768, 1024, False, 8), (600, 800, True, 8), (1024, 1224, False, 16), (512, 512, True, 8)]
    images = []
    for i in range(count):
        h, w, rgb, depth = shapes[i % len(shapes)]
        images.append((f"synthetic-{i}", make_drop(seed + i, h, w, rgb=rgb, bit_depth=depth).image))
    return images


def load_images(folder: Path | None, limit: int = 8) -> list[tuple[str, np.ndarray]]:
    from ...io.decode import read_image

    if folder is None:
        return []
    paths = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")
    )
    return [(p.name, read_image(p)) for p in paths[:limit]]


def kernel_check(images: Iterable[tuple[str, np.ndarray]]) -> tuple[bool, str]:
    """GpuPreprocessor vs apply_clahe+letterbox+normalize (1e-6), GpuMaskPaster vs paste_mask (exact)."""
    import cv2

    from ...cuda.launch import DeviceBuffer, GpuMaskPaster, GpuPreprocessor, download, synchronize
    from ...spec import PreprocessSpec
    from ..postprocess import paste_mask
    from ..preprocess import preprocess

    spec = PreprocessSpec()
    pre, paster = GpuPreprocessor(spec), GpuMaskPaster()
    src, out = DeviceBuffer(), DeviceBuffer(3 * spec.input_size**2 * 4)
    worst, count = 0.0, 0
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)  # the kernels reproduce OpenCV's own arithmetic (design-notes 13)
    try:
        for _name, pixels in images:
            if pixels.ndim == 3 and pixels.dtype == np.uint16:
                continue  # 16-bit RGB CLAHE is CPU only
            data = np.ascontiguousarray(pixels)
            channels = 1 if data.ndim == 2 else 3
            ptr = src.upload(data)
            pitch = data.shape[1] * channels * data.itemsize
            pre(ptr, pitch, data.shape[0], data.shape[1], data.dtype, channels, out.ptr)
            gpu = (
                download(out.ptr, out.nbytes).view(np.float32).reshape(1, 3, spec.input_size, spec.input_size)
            )
            worst = max(worst, float(np.abs(gpu - preprocess(data, spec).tensor).max()))
            count += 1
        rng = np.random.default_rng(0)
        probs = rng.random((8, 28, 28), dtype=np.float32)
        boxes = [
            (float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in rng.uniform(5, 300, (8, 4))
        ]
        dev = DeviceBuffer()
        dev.upload(probs)
        crops = paster(dev.ptr, 28, boxes, 480, 640)
        synchronize()
        mismatched = sum(
            int(not np.array_equal(crop, paste_mask(probs[i], boxes[i], 480, 640).crop))
            for i, (crop, _, _) in enumerate(crops)
        )
        dev.free()
    finally:
        cv2.ipp.setUseIPP(ipp)
        pre.close()
        paster.close()
        src.free()
        out.free()
    ok = worst <= 1e-6 and mismatched == 0
    return ok, f"{count} images: max |GPU-CPU| {worst:.2e}; paste: {mismatched}/8 masks differ"


def engine_checks(
    precision: str, images: list[tuple[str, np.ndarray]], workdir: Path, say: Callable[[str], None]
) -> list[Check]:
    from ...cli.demo import demo_model
    from ...evaluate.parity import Tolerances, compare_detectors
    from ..build import build_engine
    from ..detector import Detector

    checks: list[Check] = []
    start = time.perf_counter()
    try:
        manifest = build_engine(
            demo_model(), workdir / precision, backend="tensorrt", precision=precision, log=say
        )
    except Exception as exc:  # report and go on: one failed build must not hide the other checks
        return [Check(f"build {precision}", False, f"{type(exc).__name__}: {str(exc)[:200]}")]
    checks.append(
        Check(
            f"build {precision}",
            True,
            f"{manifest.engine_bytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s",
        )
    )
    reference = Detector.from_onnx(demo_model())
    with Detector.load(manifest.path or workdir / precision) as engine:
        loose = precision != "fp32"
        tol = Tolerances(
            box_iou=0.85 if loose else 0.95, mask_iou=0.8 if loose else 0.9, score=0.05 if loose else 0.01
        )

        def parity() -> tuple[bool, str]:
            report = compare_detectors(
                reference, engine, images, score_threshold=reference.model.score_threshold, tolerances=tol
            )
            s = report.summary()
            detail = (
                f"matched {s['matched']}/{s['reference_detections']}, min box IoU {s['min_box_iou']:.3f}, "
                f"min mask IoU {s['min_mask_iou']:.3f}, max score diff {s['max_score_diff']:.3f}"
            )
            return report.ok, detail if report.ok else f"{detail}; {report.failures[0][:120]}"

        checks.append(_guard(f"parity {precision} vs ONNX Runtime CPU", parity))

        def engine_latency() -> str:
            tensor = np.zeros((1, 3, engine.preprocess.input_size, engine.preprocess.input_size), np.float32)
            for _ in range(10):
                engine.backend.infer(tensor)
            samples = []
            for _ in range(100):
                t = time.perf_counter()
                engine.backend.infer(tensor)
                samples.append((time.perf_counter() - t) * 1e3)
            return _percentiles(samples)

        def end_to_end() -> str:
            samples = []
            for _ in range(3):
                for name, pixels in images:
                    t = time.perf_counter()
                    engine.detect_pixels(pixels, name=name)
                    samples.append((time.perf_counter() - t) * 1e3)
            return _percentiles(samples)

        checks.append(_guard(f"latency {precision} engine only (H2D+run+D2H)", engine_latency))
        checks.append(_guard(f"latency {precision} end to end (CPU pre/post)", end_to_end))
    return checks


def run_gpu_checks(
    images: list[tuple[str, np.ndarray]], say: Callable[[str], None], work: Path | None = None
) -> list[Check]:
    from .modules import load_tensorrt
    from .precision import has_fp16_flag

    checks = [_guard("CUDA kernels vs CPU (CLAHE, letterbox, paste)", lambda: kernel_check(images))]
    trt = load_tensorrt("crystal-rt doctor --gpu")
    precisions = ["fp32", "fp16"] if has_fp16_flag(trt) else ["fp32"]
    with tempfile.TemporaryDirectory(prefix="crystal-rt-doctor-") as tmp:
        for precision in precisions:
            checks += engine_checks(precision, images, work or Path(tmp), say)
    if "fp16" not in precisions:
        checks.append(Check("build fp16", True, "skipped: this TensorRT builds FP16 from an AutoCast graph"))
    return checks
