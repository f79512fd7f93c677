"""``crystal-rt evaluate MODEL --data COCO_JSON``: mAP@0.50/0.65, COCO AP, precision and recall.

MODEL is an engine (folder, manifest or prefix), a core ONNX, or a PyTorch checkpoint: every
backend is scored the same way, so backends can be compared on accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.table import Table

from ..console import console, info, note, progress, shown
from ..evaluate.run import evaluate_detector, open_model
from .options import add_score_threshold, add_stages, add_tiling, report_file, tiling_from_args


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model or engine on an annotated dataset", description=__doc__
    )
    p.add_argument("model", help="engine folder / manifest / prefix, core .onnx, or checkpoint .pt")
    p.add_argument("--data", required=True, help="COCO instance JSON")
    p.add_argument(
        "--images", help="folder the JSON's file_name values are relative to (default: its folder)"
    )
    p.add_argument("--json", type=report_file, help="write the report here")
    p.add_argument("--pr-curve", type=report_file, help="write precision-recall curves here (PNG)")
    add_score_threshold(p, "operating threshold, in [0, 1] (default: the model's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    add_stages(p)
    add_tiling(p)
    p.set_defaults(run=run)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    from ..data.coco import load_coco
    from ..evaluate.metrics import write_pr_curve
    from ..io.writers import atomic_write_bytes

    dataset = load_coco(args.data, args.images)
    tiling = tiling_from_args(args)
    with (
        open_model(args.model, threads=args.threads, stages=args.stages, tiling=tiling) as detector,
        progress() as bar,
    ):
        task = bar.add_task("evaluating", total=len(dataset))
        report, _ = evaluate_detector(
            detector, dataset, score_threshold=args.score_threshold, on_image=lambda: bar.advance(task)
        )
    data = report.to_dict()
    keys = ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall")
    table = Table(title=f"{shown(args.model)} on {shown(args.data)} ({report.num_images} images)")
    table.add_column("class")
    for key in keys:
        table.add_column(key, justify="right")
    for name, values in data["classes"].items():
        table.add_row(shown(name), *(_fmt(values.get(k)) for k in keys))
    table.add_row("[bold]all[/]", *(_fmt(data.get(k)) for k in keys))
    console.print(table)
    info(f"precision/recall at score >= {report.score_threshold:g}, mask IoU >= 0.5")
    best = report.best_f1
    if best:
        info(
            f"best F1 {best['f1']:.3f} at score >= {best['score_threshold']:.3f} "
            f"(precision {best['precision']:.3f}, recall {best['recall']:.3f}); "
            "crystal-rt export --score-threshold sets a model's operating threshold"
        )
    if args.json:
        atomic_write_bytes(args.json, json.dumps(data, indent=2).encode())
        note(f"wrote {args.json}")
    if args.pr_curve:
        write_pr_curve(report, args.pr_curve)
        note(f"wrote {args.pr_curve}")
    return 0
