"""ONNX Runtime INT8 vs FP32 on the CPU, end to end, with the shipped demo model, in one run.

Builds both engines from ``crystal_rt/assets/crystals.onnx``: FP32 with ``build_engine``, INT8
with ``calibrate`` (ONNX Runtime static QDQ) on 32 synthetic drops (seed 1), the accuracy
measured on 30 other drops (seed 2), both from the default generator (``crystal-rt synth``). Then
``Detector.detect`` (decode, CLAHE, letterbox, engine, paste) on the real drop images, FP32 and
INT8 alternating run by run (ABAB); medians of the same run. Target: INT8 end-to-end <= 0.6x FP32
with a mAP@0.50 drop <= 0.01. Reports, never asserts.

    python benchmarks/int8_vs_fp32.py [--runs 5] [--workdir DIR] [--json out.json]

Needs the calibrate extra (onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"
TARGET_RATIO, TARGET_DROP = 0.6, 0.01


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REAL, help="images to time (default tests/data/real)")
    p.add_argument("--runs", type=int, default=5, help="timed passes over the images per engine (default 5)")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("--workdir", type=Path, help="keep data sets and engines here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    args = parse_args()
    import onnxruntime

    from crystal_rt.assets import demo_model
    from crystal_rt.build.engine import build_engine
    from crystal_rt.calibration.api import calibrate
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.io.decode import list_images
    from crystal_rt.runtime.detector import Detector

    work = args.workdir or Path(tempfile.mkdtemp(prefix="crystal-rt-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "calib" / "annotations.json").is_file():
        print(f"writing {args.calib_images} calibration drops (seed 1) and 30 validation drops (seed 2)")
        write_synthetic(work / "calib", SynthOptions(count=args.calib_images, seed=1))
        write_synthetic(work / "val", SynthOptions(count=30, seed=2))
    build_engine(demo_model(), work / "fp32")
    t0 = time.perf_counter()
    calibrated = calibrate(
        demo_model(),
        work / "calib" / "images",
        work / "crystals.int8.onnx",
        num_images=args.calib_images,
        val=work / "val" / "annotations.json",
    )
    calib_s = time.perf_counter() - t0
    build_engine(calibrated.output, work / "int8", precision="int8")
    acc = calibrated.accuracy
    print(
        f"calibrated in {calib_s:.0f} s; mAP@0.50 {acc.fp32_map50:.4f} -> {acc.map50:.4f} "
        f"(drop {acc.map50_drop:+.4f}), mAP@0.65 {acc.fp32_map65:.4f} -> {acc.map65:.4f}, "
        f"matched mask IoU {acc.matched_mask_iou:.3f}"
    )

    images = list_images([args.images])
    times: dict[str, dict[str, list[float]]] = {"fp32": {}, "int8": {}}
    with Detector.load(work / "fp32") as fp32, Detector.load(work / "int8") as int8:
        detectors = {"fp32": fp32, "int8": int8}
        for det in detectors.values():  # warm-up
            det.detect(images[0])
        for _ in range(args.runs):
            for image in images:
                for name, det in detectors.items():
                    result = det.detect(image)
                    for stage, ms in result.timings_ms.items():
                        times[name].setdefault(stage, []).append(ms)
    medians = {name: {k: statistics.median(v) for k, v in stages.items()} for name, stages in times.items()}
    ratio_total = medians["int8"]["total"] / medians["fp32"]["total"]
    ratio_engine = medians["int8"]["engine"] / medians["fp32"]["engine"]
    print(f"\n{len(images)} images x {args.runs} runs, median ms per image")
    print(f"{'stage':<10} {'fp32':>8} {'int8':>8} {'ratio':>7}")
    for stage in medians["fp32"]:
        a, b = medians["fp32"][stage], medians["int8"][stage]
        print(f"{stage:<10} {a:8.1f} {b:8.1f} {b / a if a else float('nan'):7.3f}")
    verdict_speed = "meets" if ratio_total <= TARGET_RATIO else "misses"
    verdict_acc = "meets" if acc.map50_drop <= TARGET_DROP else "misses"
    print(f"\nINT8 end to end {ratio_total:.3f}x FP32 ({verdict_speed} the <= {TARGET_RATIO}x target)")
    print(f"mAP@0.50 drop {acc.map50_drop:+.4f} ({verdict_acc} the <= {TARGET_DROP} target)")
    if args.json:
        report: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "platform": platform.platform()},
            "onnxruntime": onnxruntime.__version__,
            "images": [p.name for p in images],
            "runs": args.runs,
            "median_ms": medians,
            "ratio_total": ratio_total,
            "ratio_engine": ratio_engine,
            "accuracy": acc.to_dict(),
            "calibration": calibrated.info.method,
            "calibration_seconds": calib_s,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
