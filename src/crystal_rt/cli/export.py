"""``crystal-rt export CHECKPOINT -o MODEL.onnx``: checkpoint -> validated core ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import output_file


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """Options shared with build-engine when it is given a checkpoint."""
    p.add_argument(
        "--arch",
        help="architecture of a plain torchvision state_dict "
        "(e.g. maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, maskrcnn_resnet18_fpn, "
        "maskrcnn_mobilenet_v3_large_fpn)",
    )
    p.add_argument("--num-classes", type=int, help="classes including the background (inferred if possible)")
    p.add_argument("--class-names", help="comma-separated names, background first")
    p.add_argument(
        "--input-size", type=int, help="network input S (multiple of 32; default: the checkpoint's, else 512)"
    )
    p.add_argument("--max-detections", type=int, help="fixed number K of output rows (default 100)")
    p.add_argument(
        "--score-threshold",
        type=float,
        help="operating threshold stored in the model (default: the checkpoint's, else 0.5; "
        "crystal-rt evaluate reports the one with the best F1)",
    )
    p.add_argument(
        "--no-clahe", action="store_true", help="for a plain state_dict: the model was trained without CLAHE"
    )
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..spec import PreprocessSpec

    options: dict[str, Any] = {
        "arch": args.arch,
        "num_classes": args.num_classes,
        "class_names": [s.strip() for s in args.class_names.split(",")] if args.class_names else None,
        "input_size": args.input_size,
        "max_detections": args.max_detections,
        "score_threshold": args.score_threshold,
        "validate": not args.no_validate,
    }
    if args.no_clahe:
        options["preprocess"] = PreprocessSpec(clahe=False, input_size=args.input_size or 512)
    return options


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to the core ONNX and validate it", description=__doc__
    )
    p.add_argument("checkpoint", type=Path, help="crystal-rt checkpoint or torchvision state_dict (.pt/.pth)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="ONNX file to write")
    add_checkpoint_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export.api import export_checkpoint
    from .console import console, err_console

    with err_console.status(f"exporting {args.checkpoint} ..."):
        result = export_checkpoint(args.checkpoint, args.output, **checkpoint_options(args))
    console.print(
        f"wrote [bold]{result.path}[/] ({result.num_nodes} nodes, input 1x3x{result.preprocess.input_size}"
        f"x{result.preprocess.input_size}, K={result.model_spec.max_detections}, "
        f"CLAHE {'on' if result.preprocess.clahe else 'off'})",
        highlight=False,
    )
    if result.parity is not None:
        s = result.parity.summary()
        console.print(
            f"validated against PyTorch on {s['images']} images ({s['images_without_detections']} without "
            f"detections): {s['matched']} detections matched, min box IoU {s['min_box_iou']:.4f}, "
            f"min mask IoU {s['min_mask_iou']:.4f}, max score diff {s['max_score_diff']:.2e}",
            highlight=False,
        )
    return 0
