"""What a model's lost mAP is made of: per-image AP by crystals per image, each miss and false alarm by kind.

The paper's mAP is a per-image AP averaged over images (``evaluate``'s definition), so the loss is
``sum(1 - AP)`` over the images; the first table splits it by how many crystals an image holds.
The second sorts every ground-truth crystal not matched at the operating point (mask IoU >= 0.5,
predictions at or above the model's threshold, greedy by score as ``evaluate`` matches) by the
best prediction the graph gave for it at any score:

- ``below threshold``: a prediction with IoU >= 0.5 that scored under the operating threshold
  (or was taken by another crystal);
- ``poorly outlined``: the best prediction overlaps it with IoU 0.25-0.5 (merged with a
  neighbour, split, or a loose mask);
- ``not found``: nothing reaches IoU 0.25.

False alarms at the operating point are sorted the same way: ``on a crystal`` (IoU >= 0.25 with
some crystal: a duplicate, a merge or a part) or ``background``. ``--nms-iou`` reruns a core ONNX
with the box-NMS threshold of its ROI heads changed (the graph's constant, 0.5 as torchvision
trains it), to see whether crossing or touching crystals are suppressed by NMS.

    python benchmarks/misses.py MODEL [--data A.json ...] [--counts 3,8,15,40] [--nms-iou 0.6,0.7]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import write_json

POOR_IOU = 0.25


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="core ONNX, checkpoint or engine")
    p.add_argument("--data", action="append", required=True, type=Path, help="COCO JSON (repeatable)")
    p.add_argument("--counts", default="3,8,15,40", help="upper edges of the crystals-per-image groups")
    p.add_argument("--nms-iou", default="", help="ROI-head NMS thresholds to rerun a core ONNX with")
    p.add_argument("--json", type=Path)
    return p.parse_args()


def group_names(edges: Sequence[int]) -> list[str]:
    bounds = [0, *edges]
    names = [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(bounds)]
    return [*names, f">{edges[-1]}"]


def with_nms_iou(model: Path, iou: float, folder: Path) -> Path:
    """A copy of a core ONNX whose ROI-head NonMaxSuppression uses ``iou``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    nodes = [
        n for n in graph.graph.node if n.op_type == "NonMaxSuppression" and n.name.startswith("/roi_heads")
    ]
    if len(nodes) != 1 or len(nodes[0].input) < 4:
        raise ValueError(f"{model}: expected one ROI-head NonMaxSuppression with an IoU input")
    name = nodes[0].input[3]
    const = [n for n in graph.graph.node if n.op_type == "Constant" and n.output[0] == name]
    if len(const) != 1:
        raise ValueError(f"{model}: the ROI-head NMS IoU ({name}) is not a Constant node")
    const[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([iou], dtype=np.float32)))
    out = folder / f"nms{iou:g}.onnx"
    onnx.save(graph, str(out))
    return out


def analyse(model: Path, datasets: list[Any], edges: list[int]) -> dict[str, Any]:
    from crystal_rt.evaluate.ap import average_precision
    from crystal_rt.evaluate.matching import greedy_match, mask_iou_matrix, matched_truths
    from crystal_rt.evaluate.run import open_model, score_detector

    names = group_names(edges)
    groups: dict[str, dict[str, list[float]]] = {n: {"ap50": [], "ap65": []} for n in names}
    misses = {"below threshold": 0, "poorly outlined": 0, "not found": 0}
    alarms = {"on a crystal": 0, "background": 0}
    num_truth = 0
    maps: list[tuple[float, float]] = []
    with open_model(str(model)) as detector:
        threshold = detector.score_threshold
        for dataset in datasets:
            report, results, truths = score_detector(detector, dataset)
            maps.append((report.map50, report.map65))
            for truth, result in zip(truths, results, strict=True):
                gts = [g for g in truth.instances if not g.iscrowd]
                if not gts:
                    continue
                num_truth += len(gts)
                preds = sorted(result.instances, key=lambda i: -i.score)  # as evaluate orders them
                ious = mask_iou_matrix([p.mask for p in preds], [g.mask for g in gts])
                kept = np.array([p.score >= threshold for p in preds], dtype=bool)
                pred_labels = np.array([p.label for p in preds], dtype=np.int64)
                truth_labels = np.array([g.label for g in gts], dtype=np.int64)
                group = names[int(np.searchsorted(edges, len(gts), side="left"))]
                for t, key in ((0.5, "ap50"), (0.65, "ap65")):
                    tp = greedy_match(ious, pred_labels, truth_labels, t)
                    groups[group][key].append(average_precision(tp, len(gts)))
                hits = matched_truths(ious[kept], pred_labels[kept], truth_labels, 0.5)
                found = {int(j) for j in hits if j >= 0}
                for j in range(len(gts)):
                    if j in found:
                        continue
                    best = float(ious[:, j].max()) if ious.shape[0] else 0.0
                    if best >= 0.5:
                        misses["below threshold"] += 1
                    else:
                        misses["poorly outlined" if best >= POOR_IOU else "not found"] += 1
                for row, j in zip(ious[kept], hits, strict=True):
                    if j < 0:
                        alarms["on a crystal" if row.size and row.max() >= POOR_IOU else "background"] += 1
    loss = sum(1.0 - ap for g in groups.values() for ap in g["ap50"])
    table = {
        n: {
            "images": len(g["ap50"]),
            "map50": float(np.mean(g["ap50"])) if g["ap50"] else None,
            "map65": float(np.mean(g["ap65"])) if g["ap65"] else None,
            "loss50_share": sum(1.0 - ap for ap in g["ap50"]) / loss if loss else None,
        }
        for n, g in groups.items()
    }
    return {
        "score_threshold": threshold,
        "map50_per_set": [a for a, _ in maps],
        "map65_per_set": [b for _, b in maps],
        "by_count": table,
        "truths": num_truth,
        "misses": misses,
        "false_alarms": alarms,
    }


def main() -> None:
    from crystal_rt.data.coco import load_coco

    args = parse_args()
    edges = [int(v) for v in args.counts.split(",")]
    datasets = [load_coco(d) for d in args.data]
    t0 = time.perf_counter()
    row = analyse(args.model, datasets, edges)
    took = time.perf_counter() - t0
    print(f"{args.model} on {len(datasets)} sets ({took:.0f} s), threshold {row['score_threshold']:g}")
    print("mAP@0.50 per set: " + " / ".join(f"{v:.3f}" for v in row["map50_per_set"]))
    print(f"{'crystals/image':>15} {'images':>7} {'mAP@0.50':>9} {'mAP@0.65':>9} {'share of loss':>14}")
    for name, g in row["by_count"].items():
        if g["images"]:
            share = g["loss50_share"] or 0.0
            print(f"{name:>15} {g['images']:>7} {g['map50']:>9.3f} {g['map65']:>9.3f} {share:>14.2f}")
    missed = sum(row["misses"].values())
    kinds = ", ".join(f"{k} {v}" for k, v in row["misses"].items())
    print(f"crystals missed at the operating point: {missed} of {row['truths']}: {kinds}")
    alarms = ", ".join(f"{k} {v}" for k, v in row["false_alarms"].items())
    print(f"false alarms at the operating point: {alarms}")
    out: dict[str, Any] = {"model": str(args.model), "data": [str(d) for d in args.data], **row, "nms": {}}
    if args.nms_iou:
        with tempfile.TemporaryDirectory() as tmp:
            for iou in (float(v) for v in args.nms_iou.split(",")):
                variant = analyse(with_nms_iou(args.model, iou, Path(tmp)), datasets, edges)
                out["nms"][f"{iou:g}"] = {k: variant[k] for k in ("map50_per_set", "map65_per_set", "misses")}
                print(
                    f"ROI NMS IoU {iou:g}: mAP@0.50 "
                    + " / ".join(f"{v:.3f}" for v in variant["map50_per_set"])
                    + ", mAP@0.65 "
                    + " / ".join(f"{v:.3f}" for v in variant["map65_per_set"]),
                    flush=True,
                )
    write_json(args.json, out)


if __name__ == "__main__":
    main()
