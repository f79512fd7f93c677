"""End-to-end latency of the demo engine (ONNX Runtime FP32, CPU) vs image size and vs number of
detections, in one run.

- Size: synthetic RGB 8-bit drops of 512x512, 1024x1024, 2048x2048 and 4096x3000 (W x H), held in
  memory as PNG bytes; every run goes through all sizes in turn (ABCDABCD...). The engine always
  sees S x S (letterbox), so what grows is decode, CLAHE, letterbox and the paste at full size.
- Detections: one 1024x1224 synthetic drop (12 crystals at most) at score thresholds from 0.99 down
  to 0.0 (0.0 keeps all K = max_detections outputs), interleaved the same way; the engine's outputs
  are identical, only the selection and paste (and the JSON encode) change.

Each sample is ``Detector.detect`` + encoding the result to JSON.

    python benchmarks/scaling.py [--runs 3] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import pyplot, save_figure, write_json

SIZES = ((512, 512), (1024, 1024), (2048, 2048), (4096, 3000))  # (width, height)
THRESHOLDS = (0.99, 0.89, 0.5, 0.2, 0.05, 0.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args()


def timed(
    det: Any, data: bytes, name: str, threshold: float | None = None
) -> tuple[float, dict[str, float], int]:
    t0 = time.perf_counter()
    result = det.detect(data, name=name, score_threshold=threshold)
    t1 = time.perf_counter()
    result.to_json()
    t2 = time.perf_counter()
    stages = dict(result.timings_ms)
    stages["encode"] = (t2 - t1) * 1e3
    return (t2 - t0) * 1e3, stages, len(result.instances)


def main() -> int:
    args = parse_args()
    from crystal_rt.assets import demo_model
    from crystal_rt.bench.environment import collect_environment
    from crystal_rt.bench.runner import synthetic_images
    from crystal_rt.runtime.build import build_engine
    from crystal_rt.runtime.detector import Detector

    sized = {f"{w}x{h}": synthetic_images(1, h, w, seed=7)[0] for w, h in SIZES}
    drop = synthetic_images(1, 1024, 1224, seed=3)[0]
    with tempfile.TemporaryDirectory(prefix="crystal-rt-scaling-") as tmp:
        manifest = build_engine(demo_model(), Path(tmp) / "demo")
        det = Detector.load(Path(tmp) / "demo")
        size_ms: dict[str, list[float]] = {k: [] for k in sized}
        size_stages: dict[str, dict[str, list[float]]] = {k: {} for k in sized}
        size_dets: dict[str, int] = {}
        thr_ms: dict[str, list[float]] = {str(t): [] for t in THRESHOLDS}
        thr_stages: dict[str, dict[str, list[float]]] = {str(t): {} for t in THRESHOLDS}
        thr_dets: dict[str, int] = {}
        for i in range(args.warmup + args.runs):
            for key, image in sized.items():
                ms, stages, n = timed(det, image.data, image.name)
                size_dets[key] = n
                if i >= args.warmup:
                    size_ms[key].append(ms)
                    for s, v in stages.items():
                        size_stages[key].setdefault(s, []).append(v)
            for t in THRESHOLDS:
                ms, stages, n = timed(det, drop.data, drop.name, t)
                thr_dets[str(t)] = n
                if i >= args.warmup:
                    thr_ms[str(t)].append(ms)
                    for s, v in stages.items():
                        thr_stages[str(t)].setdefault(s, []).append(v)
            print(f"pass {i + 1}/{args.warmup + args.runs} done", flush=True)
        det.close()

    def med(d: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
        return {k: {s: statistics.median(v) for s, v in st.items()} for k, st in d.items()}

    by_size, by_thr = med(size_stages), med(thr_stages)
    cols = ("decode", "clahe", "letterbox", "engine", "paste", "encode")
    print(f"\nby image size (median ms, {args.runs} runs, interleaved); ratio to 512x512")
    print(f"{'size':>10} {'dets':>5} " + " ".join(f"{c:>9}" for c in cols) + f" {'end2end':>9} {'ratio':>6}")
    base = statistics.median(size_ms["512x512"])
    for key in sized:
        e2e = statistics.median(size_ms[key])
        print(f"{key:>10} {size_dets[key]:>5} " + " ".join(f"{by_size[key][c]:9.1f}" for c in cols)
              + f" {e2e:9.1f} {e2e / base:6.2f}")  # fmt: skip
    print(
        "\nby detections (1024x1224 drop, score threshold varied; median ms); "
        f"ratio to threshold {THRESHOLDS[0]}"
    )
    print(
        f"{'threshold':>10} {'dets':>5} "
        + " ".join(f"{c:>9}" for c in cols)
        + f" {'end2end':>9} {'ratio':>6}"
    )
    base = statistics.median(thr_ms[str(THRESHOLDS[0])])
    for key, samples in thr_ms.items():
        e2e = statistics.median(samples)
        print(f"{key:>10} {thr_dets[key]:>5} " + " ".join(f"{by_thr[key][c]:9.1f}" for c in cols)
              + f" {e2e:9.1f} {e2e / base:6.2f}")  # fmt: skip
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "runs": args.runs, "warmup": args.warmup,
        "by_size": {k: {"detections": size_dets[k], "end_to_end_ms": statistics.median(size_ms[k]),
                        "stages_ms": by_size[k], "samples_ms": size_ms[k]} for k in sized},
        "by_threshold": {k: {"detections": thr_dets[k], "end_to_end_ms": statistics.median(thr_ms[k]),
                             "stages_ms": by_thr[k], "samples_ms": thr_ms[k]} for k in thr_ms},
        "environment": collect_environment(manifest.to_dict()),
    }  # fmt: skip
    write_json(args.json, report)
    if args.plot:
        plot(report, args.plot, cols)
        print(f"wrote {args.plot}")
    return 0


def plot(report: dict[str, Any], path: Path, cols: tuple[str, ...]) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, xlabel in ((axes[0], "by_size", "image size (W x H)"),
                            (axes[1], "by_threshold", "detections (score threshold)")):  # fmt: skip
        rows = report[key]
        labels = list(rows) if key == "by_size" else [f"{r['detections']} ({k})" for k, r in rows.items()]
        bottom = [0.0] * len(rows)
        for c in cols:
            vals = [r["stages_ms"].get(c, 0.0) for r in rows.values()]
            ax.bar(labels, vals, bottom=bottom, label=c)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median ms")
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("demo engine, ONNX Runtime FP32, end to end by stage", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
