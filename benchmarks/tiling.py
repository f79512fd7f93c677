"""Tiled inference for small crystals: recall gained and time paid, in the same run.

Synthetic large drops (seeded, 2028 x 2532, 120-150 crystals of 1-2.5 % of the short side, i.e.
20-50 px: exact ground-truth masks) and the real big_crystals_3.jpg, through the demo engine (ONNX
Runtime FP32, 512 px letterbox): the whole image at once (it shrinks ~5x: crystals of 4-10 px)
against overlapping 512-px tiles at native scale (``--tiles on``, overlap 0.25 and 0.1), merged
(runtime/tiling.py). Recall and precision at box IoU 0.5 against the ground truth, duplicates
(ground-truth crystals matched by more than one detection), and the median time per image; the
ratio tiled / whole is the cost.

    python benchmarks/tiling.py [--images 3] [--runs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import write_json

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3, help="synthetic large drops (default 3)")
    p.add_argument("--runs", type=int, default=2, help="timed passes per image and mode (default 2)")
    p.add_argument("--size", default="2028x2532", help="HxW of the synthetic drops")
    p.add_argument("--model", type=Path, help="core ONNX to build from (default: the shipped model)")
    p.add_argument("--components", default="all", help="generator components (default all; none: as before)")
    p.add_argument("--json", type=Path)
    return p.parse_args()


def gt_boxes(masks: list[np.ndarray]) -> list[tuple[float, float, float, float]]:
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return boxes


def iou(a: Any, b: Any) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(result: Any, truth: list[tuple[float, float, float, float]]) -> dict[str, float]:
    boxes = [inst.box for inst in result.instances]
    hits = [[j for j, b in enumerate(boxes) if iou(t, b) > 0.5] for t in truth]
    matched = {j for h in hits for j in h}
    return {
        "detections": len(boxes),
        "recall": sum(1 for h in hits if h) / max(len(truth), 1),
        "precision": len(matched) / max(len(boxes), 1),
        "duplicated": sum(1 for h in hits if len(h) > 1),
    }


def main() -> None:
    args = parse_args()
    from crystal_rt import Detector
    from crystal_rt.assets import demo_model
    from crystal_rt.build.engine import build_engine
    from crystal_rt.data.realism import Components
    from crystal_rt.data.synthetic import make_drop
    from crystal_rt.io.decode import read_image
    from crystal_rt.runtime.tiling import Tiling

    height, width = (int(v) for v in args.size.lower().split("x"))
    modes: dict[str, Tiling | None] = {
        "whole": None,
        "tiles overlap 0.25": Tiling("on", overlap=0.25),
        "tiles overlap 0.1": Tiling("on", overlap=0.1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        engine = Path(tmp) / "engine"
        build_engine(args.model or demo_model(), engine, name="crystals", backend="onnxruntime")
        detectors = {name: Detector.load(engine, tiling=tiling) for name, tiling in modes.items()}
        drops = []
        for i in range(args.images):
            t0 = time.perf_counter()
            drop = make_drop(
                100 + i,
                height,
                width,
                150,
                crystal_size=(0.01, 0.025),
                min_crystals=120,
                components=Components.parse(args.components),
            )
            print(f"drop {i}: {len(drop.masks)} crystals ({time.perf_counter() - t0:.1f} s to make)")
            drops.append((f"synthetic-{i}", drop.image, gt_boxes(drop.masks)))
        rows: dict[str, dict[str, list[float]]] = {name: {} for name in modes}
        for label, image, truth in drops:
            for name, det in detectors.items():
                det.detect(image)  # warm-up
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    result = det.detect(image, name=label)
                    times.append((time.perf_counter() - t0) * 1e3)
                stats = score(result, truth)
                stats["ms"] = statistics.median(times)
                stats["tiles"] = result.windows
                for key, value in stats.items():
                    rows[name].setdefault(key, []).append(float(value))
        real_path = REAL / "big_crystals_3.jpg"
        real: dict[str, Any] = {}
        if real_path.is_file():
            pixels = read_image(real_path)
            for name, det in detectors.items():
                result = det.detect(pixels)
                real[name] = {"detections": len(result), "tiles": result.windows}
        for det in detectors.values():
            det.close()
    summary = {name: {k: float(np.mean(v)) for k, v in cols.items()} for name, cols in rows.items()}
    whole_ms = summary["whole"]["ms"]
    header = ("mode", "tiles", "dets", "recall", "precision", "dup", "ms", "cost")
    widths = (20, 5, 6, 7, 9, 5, 8, 6)
    print(
        "\n"
        + " ".join(
            f"{h:{'<' if i == 0 else '>'}{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for name, s in summary.items():
        print(
            f"{name:20} {s['tiles']:5.0f} {s['detections']:6.1f} {s['recall']:7.3f} {s['precision']:9.3f} "
            f"{s['duplicated']:5.1f} {s['ms']:8.0f} {s['ms'] / whole_ms:5.1f}x"
        )
    for name, r in real.items():
        print(f"big_crystals_3.jpg, {name}: {r['detections']} detections ({r['tiles']} tiles)")
    write_json(
        args.json,
        {
            "images": args.images,
            "model": str(args.model or "shipped"),
            "components": args.components,
            "size": [height, width],
            "runs": args.runs,
            "summary": summary,
            "per_image": rows,
            "big_crystals_3": real,
        },
    )


if __name__ == "__main__":
    main()
