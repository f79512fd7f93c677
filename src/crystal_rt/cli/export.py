"""``crystal-rt export CHECKPOINT -o MODEL.onnx``: checkpoint -> validated core ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._lazy import require
from ..console import console, err_console, shown
from ..export.options import ExportOptions
from .options import output_file


def input_size(text: str) -> int | tuple[int, int]:
    """``S`` or ``HxW`` (the recipe's resize: the letterbox canvas, or the stretch size)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1 or max(values) > 16384:
        raise argparse.ArgumentTypeError(f"expected S or HxW (e.g. 512 or 1352x1688), got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def tile_grid(text: str) -> tuple[int, int]:
    """``CxR`` (OpenCV's tileGridSize: columns x rows) or ``N`` (N x N)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1 or max(values) > 256:
        raise argparse.ArgumentTypeError(
            f"expected N or CxR with values in 1..256 (e.g. 8 or 12x12), got {text!r}"
        )
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def clip_limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1000.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1000] (OpenCV's clipLimit), got {text!r}")
    return value


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
        "--preset",
        choices=("paper", "chimp"),
        help="preprocessing recipe: paper (CLAHE, letterbox to 512, /max, ImageNet; the default for a "
        "plain state_dict) or chimp (Diamond's CHiMP: stretch to 1352x1688, CLAHE 12x12 clip 2.5 on L, "
        "min-max, torchvision's 800/1333 transform); default: the checkpoint's recipe",
    )
    p.add_argument(
        "--input-size",
        type=input_size,
        metavar="S|HxW",
        help="the recipe's resize: letterbox canvas S (multiple of 32) or HxW, or chimp's stretch size",
    )
    p.add_argument("--clip-limit", type=clip_limit, help="CLAHE clip limit (paper 2.0, chimp 2.5)")
    p.add_argument("--tile-grid", type=tile_grid, metavar="CxR", help="CLAHE grid (paper 8x8, chimp 12x12)")
    p.add_argument("--max-detections", type=int, help="fixed number K of output rows (default 100)")
    p.add_argument(
        "--score-threshold",
        type=float,
        help="operating threshold stored in the model (default: the checkpoint's, else 0.5; "
        "crystal-rt evaluate reports the one with the best F1)",
    )
    p.add_argument("--no-clahe", action="store_true", help="the model was trained without CLAHE")
    p.add_argument(
        "--training-bit-depth",
        type=int,
        choices=(8, 16),
        help="bit depth of the training images: 8 (the presets; 16-bit images are mapped to 8 bits "
        "before CLAHE) or 16 (16-bit CLAHE); default: the checkpoint's recipe, else 8",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")


def checkpoint_options(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        arch=args.arch,
        num_classes=args.num_classes,
        class_names=tuple(s.strip() for s in args.class_names.split(",")) if args.class_names else None,
        preset=args.preset,
        input_size=args.input_size,
        clahe=False if args.no_clahe else None,
        clip_limit=args.clip_limit,
        tile_grid=args.tile_grid,
        training_bit_depth=args.training_bit_depth,
        max_detections=args.max_detections,
        score_threshold=args.score_threshold,
        validate=not args.no_validate,
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to the core ONNX and validate it", description=__doc__
    )
    p.add_argument("checkpoint", type=Path, help="crystal-rt checkpoint or torchvision state_dict (.pt/.pth)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="ONNX file to write")
    add_checkpoint_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for module in ("torch", "torchvision", "onnx"):  # one sentence in an edge install
        require(module, "Exporting a checkpoint", extra="export")
    from ..export.api import export_checkpoint

    with err_console.status(f"exporting {shown(args.checkpoint)} ..."):
        result = export_checkpoint(args.checkpoint, args.output, **checkpoint_options(args).kwargs())
    h, w = result.preprocess.input_hw
    recipe = result.preprocess.preset_name or "custom"
    clahe = "on" if result.preprocess.clahe else "off"
    console.print(
        f"wrote [bold]{shown(result.path)}[/] ({result.num_nodes} nodes, input 1x3x{h}x{w}, "
        f"K={result.model_spec.max_detections}, recipe {recipe}, CLAHE {clahe})",
        highlight=False,
    )
    for line in result.preprocess.describe()[:-1]:
        console.print(f"  {line}", highlight=False, markup=False)
    if result.parity is not None:
        s = result.parity.summary()
        console.print(
            f"validated against PyTorch on {s['images']} images ({s['images_without_detections']} without "
            f"detections): {s['matched']} detections matched, min box IoU {s['min_box_iou']:.4f}, "
            f"min mask IoU {s['min_mask_iou']:.4f}, max score diff {s['max_score_diff']:.2e}",
            highlight=False,
        )
    return 0
