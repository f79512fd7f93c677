"""``crystal-rt calibrate MODEL --images DIR --precision int8|fp16 -o OUT.onnx``: lower-precision graphs."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from ..console import console, info, note, progress, shown
from .options import output_file, report_file


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """Options shared with ``build-engine --calib``."""
    p.add_argument("--num-images", type=int, default=32, help="images sampled for calibration (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sample (default 0)")
    p.add_argument(
        "--val",
        type=Path,
        help="COCO JSON with ground truth to measure the accuracy drop on (default: FP32's own "
        "detections on images of the folder that calibration did not use)",
    )
    p.add_argument(
        "--held-out", type=int, default=16, help="images for the accuracy check without --val (default 16)"
    )
    p.add_argument(
        "--max-map-drop",
        type=float,
        default=0.01,
        help="refuse a graph whose mAP@0.50 drops more than this against FP32 (default 0.01)",
    )
    p.add_argument("--force", action="store_true", help="write the graph even past --max-map-drop")
    p.add_argument("--recursive", action="store_true", help="also use the images in the folder's sub-folders")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="make an INT8 or FP16 ONNX from the FP32 core ONNX, calibrated on your images",
        description=__doc__ + " INT8 for ONNX Runtime (the CPU engine) uses ONNX Runtime's static "
        "quantization; INT8 and FP16 for TensorRT use NVIDIA ModelOpt (pip install "
        '"crystal-rt[calibrate-trt]"). Runs on the CPU.',
    )
    p.add_argument("model", type=Path, help="FP32 core ONNX (crystal-rt export)")
    p.add_argument("--images", type=Path, required=True, help="folder of typical drop images")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    p.add_argument(
        "--target",
        choices=("onnxruntime", "tensorrt"),
        help="engine the graph is for (default: onnxruntime for int8, tensorrt for fp16)",
    )
    p.add_argument("-o", "--output", type=output_file, required=True, help="output ONNX file")
    p.add_argument("--json", type=report_file, help="write the accuracy report as JSON here")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    add_calibration_options(p)
    p.set_defaults(run=run)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from ..calibration.api import calibrate
    from ..io.writers import atomic_write_bytes

    with progress() as bar:
        state: dict[str, Any] = {}

        def on_step(name: str, total: int) -> None:
            if "task" in state:
                bar.remove_task(state["task"])
            state["task"] = bar.add_task(name, total=total)

        result = calibrate(
            args.model,
            args.images,
            args.output,
            precision=args.precision,
            target=args.target,
            num_images=args.num_images,
            seed=args.seed,
            val=args.val,
            held_out=args.held_out,
            max_map_drop=args.max_map_drop,
            force=args.force,
            threads=args.threads,
            recursive=args.recursive,
            log=note,
            on_step=on_step,
            on_image=lambda: bar.advance(state["task"]),
        )
    acc = result.accuracy
    table = Table(title=f"{result.info.precision} ({result.info.target}) vs FP32 on {shown(acc.reference)}")
    for column in ("graph", "mAP@0.50", "mAP@0.65", "detections", "engine ms (median)"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    table.add_row("fp32", _fmt(acc.fp32_map50), _fmt(acc.fp32_map65), str(acc.fp32_detections),
                  f"{acc.fp32_engine_ms:.1f}")  # fmt: skip
    table.add_row(result.info.precision, _fmt(acc.map50), _fmt(acc.map65), str(acc.detections),
                  f"{acc.engine_ms:.1f}")  # fmt: skip
    console.print(table)
    info(
        f"mAP@0.50 drop {acc.map50_drop:+.4f} (limit {args.max_map_drop:g}); {acc.matched} of "
        f"{acc.fp32_detections} FP32 detections matched, mean mask IoU {_fmt(acc.matched_mask_iou)}"
    )
    if not result.accepted:
        info("[yellow]written with --force although past --max-map-drop[/]")
    if args.json:
        report = {"output": str(result.output), "calibration": asdict(result.info)}
        atomic_write_bytes(args.json, json.dumps(report, indent=2).encode())
        note(f"wrote {args.json}")
    return 0
