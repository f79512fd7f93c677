"""Where a model's misses are: recall by crystal size at the engine's scale, beside mAP, same run.

Each ground-truth crystal is put in a bucket by the longer side of its box after the letterbox
(image side x input size / the image's longer side): the size the model sees on a whole image.
Recall per bucket is at the model's operating threshold, matched the way ``evaluate`` matches
(mask IoU >= 0.50 and >= 0.65, greedy by score). ``--tiles`` runs the model as ``detect --tiles``
does, so the buckets show what tiling recovers. Every model is scored on the same COCO sets.

    python benchmarks/by_size.py MODEL.onnx [MODEL2 ...] --data A.json [--data B.json ...]
        [--tiles auto] [--edges 8,12,16,24,48] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import write_json


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="core ONNX files, checkpoints or engines")
    p.add_argument("--data", action="append", required=True, type=Path, help="COCO JSON (repeatable)")
    p.add_argument("--tiles", choices=("off", "auto", "on"), default="off")
    p.add_argument("--edges", default="8,12,16,24,48", help="bucket edges in engine pixels")
    p.add_argument("--json", type=Path)
    return p.parse_args()


def bucket_names(edges: list[float]) -> list[str]:
    bounds = [0.0, *edges, float("inf")]
    return [f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}" for lo, hi in itertools.pairwise(bounds)]


def score(detector: Any, dataset: Any, edges: list[float]) -> dict[str, Any]:
    """mAP and precision/recall from evaluate, and recall per engine-scale size bucket."""
    from crystal_rt.evaluate.matching import mask_iou_matrix, matched_truths
    from crystal_rt.evaluate.run import score_detector

    report, results, image_truths = score_detector(detector, dataset)
    size = detector.preprocess.input_size
    names = bucket_names(edges)
    truths = {name: 0 for name in names}
    found: dict[float, dict[str, int]] = {t: {name: 0 for name in names} for t in (0.5, 0.65)}
    for truth, result in zip(image_truths, results, strict=True):
        gts = [g for g in truth.instances if not g.iscrowd]
        scale = size / max(truth.height, truth.width)
        sides = [max(g.mask.crop.shape) * scale for g in gts]
        where = [names[int(np.searchsorted(edges, s, side="right"))] for s in sides]
        for name in where:
            truths[name] += 1
        preds = sorted(
            (i for i in result.instances if i.score >= detector.score_threshold), key=lambda i: -i.score
        )
        ious = mask_iou_matrix([p.mask for p in preds], [g.mask for g in gts])
        pred_labels = np.array([p.label for p in preds], dtype=np.int64)
        truth_labels = np.array([g.label for g in gts], dtype=np.int64)
        for t, counts in found.items():
            for j in matched_truths(ious, pred_labels, truth_labels, t):
                if j >= 0:
                    counts[where[j]] += 1
    data = report.to_dict()
    return {
        **{k: data[k] for k in ("map50", "map65", "precision", "recall")},
        "truths": truths,
        "recall50": {n: found[0.5][n] / truths[n] if truths[n] else None for n in names},
        "recall65": {n: found[0.65][n] / truths[n] if truths[n] else None for n in names},
    }


def main() -> None:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.evaluate.run import open_model
    from crystal_rt.runtime.tiling import Tiling

    args = parse_args()
    edges = [float(v) for v in args.edges.split(",")]
    names = bucket_names(edges)
    tiling = Tiling(mode=args.tiles)
    out: dict[str, Any] = {"tiles": args.tiles, "edges": edges, "results": {}}
    for data in args.data:
        dataset = load_coco(data)
        for model in args.models:
            t0 = time.perf_counter()
            with open_model(str(model), tiling=tiling) as detector:
                row = score(detector, dataset, edges)
            out["results"].setdefault(str(model), {})[str(data)] = row
            recall = "  ".join(
                f"{n}: {row['recall50'][n]:.2f}/{row['recall65'][n]:.2f} ({row['truths'][n]})"
                if row["truths"][n]
                else f"{n}: -"
                for n in names
            )
            print(
                f"{data} {model}: mAP {row['map50']:.3f}/{row['map65']:.3f}, recall by engine px "
                f"(IoU 0.5/0.65, crystals): {recall}   ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    write_json(args.json, out)


if __name__ == "__main__":
    main()
