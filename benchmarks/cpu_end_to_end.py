"""CPU end to end: torchvision eager Mask R-CNN vs ``crystal-rt detect`` on ONNX Runtime.

Same weights (maskrcnn_resnet50_fpn, 2 classes, seeded), same score threshold, S=512, one image.
torchvision runs decode -> CLAHE -> its own transform (resize + normalise) -> model -> its own
mask paste at full resolution -> score/mask thresholds. crystal-rt runs ``Detector.detect`` (decode,
CLAHE, letterbox, ORT, selection, paste). The two alternate run by run (ABAB); medians in one run.
Target: crystal-rt median <= 0.40x torchvision's. Reports, never asserts.

    PYTHONPATH=src python benchmarks/cpu_end_to_end.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "real" / "97wo_01A_1.jpg"
ARCH, NUM_CLASSES, INPUT_SIZE, THRESHOLD, TARGET = "maskrcnn_resnet50_fpn", 2, 512, 0.5, 0.40


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch
    import torchvision

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def make_torchvision(model: Any, spec: Any, image: Path) -> Callable[[], int]:
    """decode -> CLAHE -> model([x]) (own transform and paste) -> keep >= threshold -> masks > 0.5."""
    import torch

    from crystal_rt.io.decode import read_image
    from crystal_rt.runtime.preprocess import apply_clahe

    def run() -> int:
        pixels = apply_clahe(read_image(image), spec)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(scale)
        with torch.inference_mode():
            out = model([tensor])[0]
        keep = out["scores"] >= THRESHOLD
        masks = out["masks"][keep][:, 0] > 0.5  # (N, H, W) bool at full resolution
        return int(masks.shape[0])

    return run


def loadavg() -> list[float]:
    """1/5/15-minute load averages: other processes on the machine distort both pipelines' times."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def report(res: dict[str, Any]) -> None:
    env, tv, cr = res["environment"], res["torchvision"], res["crystal_rt"]
    print(f"CPU: {env['cpu']} ({env['cores']} cores), torch threads {env['torch_threads']}")
    print(
        f"torch {env['torch']}, torchvision {env['torchvision']}, onnxruntime {env['onnxruntime']}, "
        f"numpy {env['numpy']}, python {env['python']}"
    )
    print(
        f"image: {res['image']} ({res['width']}x{res['height']}), S={INPUT_SIZE}, threshold {THRESHOLD}, "
        f"{res['runs']} runs (ABAB) after {res['warmup']} warm-up"
    )
    print(f"engine build (export + ORT optimise, not timed below): {res['build_s']:.1f} s")
    rows = [("torchvision eager", tv), ("crystal-rt detect (ORT)", cr)]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="End to end, ms")
        for col in ("pipeline", "median", "min", "max", "detections"):
            table.add_column(col, justify="left" if col == "pipeline" else "right")
        for name, r in rows:
            table.add_row(
                name,
                f"{r['median_ms']:.1f}",
                f"{r['min_ms']:.1f}",
                f"{r['max_ms']:.1f}",
                str(r["detections"]),
            )
        Console().print(table)
    except ImportError:
        for name, r in rows:
            print(
                f"{name:26s} median {r['median_ms']:8.1f} ms  min {r['min_ms']:8.1f} ms  "
                f"detections {r['detections']}"
            )
    stages = ", ".join(f"{k} {v:.1f}" for k, v in cr["stage_medians_ms"].items())
    print(f"crystal-rt stage medians (ms): {stages}")
    verdict = "meets" if res["ratio"] <= TARGET else "misses"
    print(
        f"ratio crystal-rt / torchvision = {res['ratio']:.3f}x ({verdict} the <= {TARGET:.2f}x target); "
        f"ratio of minimums {res['ratio_of_min']:.3f}x"
    )
    print(f"load average (1/5/15 min) before {res['load_before']}, after {res['load_after']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write all results to this file")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    if not args.image.is_file():
        print(f"error: image not found: {args.image} (pass --image PATH)", file=sys.stderr)
        return 2

    import torch

    from crystal_rt.build.engine import ExportOptions, build_engine
    from crystal_rt.io.decode import read_image
    from crystal_rt.models.maskrcnn import build_maskrcnn, save_checkpoint
    from crystal_rt.runtime.detector import STAGES, Detector
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    spec = PreprocessSpec.paper(input_size=INPUT_SIZE)
    model_spec = ModelSpec(arch=ARCH, num_classes=NUM_CLASSES, max_detections=100, score_threshold=THRESHOLD)
    torch.manual_seed(args.seed)
    model = build_maskrcnn(ARCH, NUM_CLASSES, preprocess=spec, max_detections=model_spec.max_detections)
    height, width = read_image(args.image).shape[:2]
    load_before = loadavg()

    with tempfile.TemporaryDirectory(prefix="crystal-rt-bench-") as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "model.pt", model, model_spec, spec)
        t0 = time.perf_counter()
        build_engine(checkpoint, Path(tmp) / "engine", export=ExportOptions(validate=False))
        build_s = time.perf_counter() - t0
        det = Detector.load(Path(tmp) / "engine", score_threshold=THRESHOLD)
        tv_run = make_torchvision(model, spec, args.image)
        stage_samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
        counts = {"torchvision": 0, "crystal_rt": 0}

        def cr_run() -> int:
            result = det.detect(args.image)
            for key, value in result.timings_ms.items():
                stage_samples.setdefault(key, []).append(value)
            return len(result.instances)

        for _ in range(args.warmup):
            tv_run()
            cr_run()
        stage_samples = {k: [] for k in stage_samples}
        tv_ms: list[float] = []
        cr_ms: list[float] = []
        for i in range(args.runs):
            for name, fn, out in (("torchvision", tv_run, tv_ms), ("crystal_rt", cr_run, cr_ms)):
                t = time.perf_counter()
                counts[name] = fn()
                out.append((time.perf_counter() - t) * 1e3)
            print(f"run {i + 1}/{args.runs}: torchvision {tv_ms[-1]:.1f} ms, crystal-rt {cr_ms[-1]:.1f} ms")
        det.close()

    tv, cr = summary(tv_ms), summary(cr_ms)
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "image": str(args.image),
        "width": width,
        "height": height,
        "arch": ARCH,
        "num_classes": NUM_CLASSES,
        "input_size": INPUT_SIZE,
        "score_threshold": THRESHOLD,
        "seed": args.seed,
        "runs": args.runs,
        "warmup": args.warmup,
        "build_s": build_s,
        "environment": environment(),
        "torchvision": {**tv, "samples_ms": tv_ms, "detections": counts["torchvision"]},
        "crystal_rt": {
            **cr,
            "samples_ms": cr_ms,
            "detections": counts["crystal_rt"],
            "stage_medians_ms": {k: statistics.median(v) for k, v in stage_samples.items() if v},
            "stage_samples_ms": stage_samples,
        },
        "ratio": cr["median_ms"] / tv["median_ms"],
        "ratio_of_min": cr["min_ms"] / tv["min_ms"],
        "target": TARGET,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    report(res)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
