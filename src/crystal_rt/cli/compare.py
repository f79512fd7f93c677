"""``crystal-rt compare ENGINE --reference CHECKPOINT IMAGES...``: parity of an engine with PyTorch.

Detections are matched by IoU (never elementwise); the command fails when a matched box IoU is
below 0.99, a mask IoU below 0.98, a score differs by more than 1e-3, or a detection has no
counterpart (other than borderline ones at the score threshold or the K-th place).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .._lazy import require
from ..console import console, progress, shown
from ..errors import ParityError
from .options import add_stages

if TYPE_CHECKING:
    import numpy as np


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare an engine with the PyTorch reference", description=__doc__)
    p.add_argument("engine", help="engine folder, manifest, or DIR/NAME prefix")
    p.add_argument("images", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument(
        "--reference", type=Path, required=True, help="the checkpoint the engine was exported from"
    )
    p.add_argument("--arch", help="architecture, for a plain torchvision state_dict")
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.05,
        help="compare all detections scoring at least this (default 0.05, the in-graph threshold)",
    )
    p.add_argument("--box-iou", type=float, default=0.99)
    p.add_argument("--mask-iou", type=float, default=0.98)
    p.add_argument("--score-tol", type=float, default=1e-3)
    add_stages(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for module in ("torch", "torchvision"):  # one sentence in an edge install
        require(module, "Comparing with the PyTorch reference", extra="export")
    from ..evaluate.parity import Tolerances, compare_detectors, worst_failure
    from ..io.decode import list_images, read_image
    from ..models.reference import detector_from_checkpoint
    from ..runtime.detector import Detector

    engine = Detector.load(args.engine, score_threshold=args.score_threshold, stages=args.stages)
    reference = detector_from_checkpoint(
        args.reference,
        score_threshold=args.score_threshold,
        arch=args.arch,
        preprocess=engine.preprocess,
        max_detections=engine.model.max_detections,
    )
    tol = Tolerances(box_iou=args.box_iou, mask_iou=args.mask_iou, score=args.score_tol)
    paths = list_images(args.images)

    def images() -> Iterator[tuple[str, np.ndarray]]:
        with progress() as bar:
            task = bar.add_task("comparing", total=len(paths))
            for path in paths:
                yield str(path), read_image(path)
                bar.advance(task)

    report = compare_detectors(
        reference, engine, images(), score_threshold=args.score_threshold, tolerances=tol
    )
    table = Table(title=f"{shown(engine.backend.name)} vs torch reference", title_justify="left")
    for col in ("image", "torch", "engine", "matched", "min box IoU", "min mask IoU", "max |d score|", "ok"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for img in report.images:
        table.add_row(
            shown(Path(img.image).name),
            str(img.num_reference),
            str(img.num_candidate),
            str(img.matched),
            f"{min(img.box_ious, default=1.0):.4f}",
            f"{min(img.mask_ious, default=1.0):.4f}",
            f"{max(img.score_diffs, default=0.0):.2e}",
            "yes" if not img.failures else "[red]no[/]",
        )
    console.print(table)
    if not report.ok:
        raise ParityError(f"{len(report.failures)} problem(s); worst: {worst_failure(report)}", report=report)
    console.print("[green]parity within tolerances[/]")
    return 0
