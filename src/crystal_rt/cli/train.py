"""``crystal-rt train --data COCO_JSON -o RUN``: fine-tune a Mask R-CNN; RUN/best.pt is what export reads."""

from __future__ import annotations

import argparse
from typing import Any

from .._lazy import require
from ..console import err_console, note, progress, shown, warn
from ..train.recipes import RECIPES
from .options import output_dir, unit_float


def parse_grid(text: str) -> tuple[int, int]:
    """``8x8`` -> (8, 8), in cv2's (columns, rows) order."""
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS such as 8x8, not {text!r}") from None
    if cols < 1 or rows < 1:
        raise argparse.ArgumentTypeError("tile grid sizes must be at least 1")
    return cols, rows


def parse_scale_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` (e.g. 0.5,2) -> (0.5, 2.0)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.5,2), not {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"need 0 < LOW <= HIGH, not {text!r}")
    return low, high


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a Mask R-CNN on a COCO dataset", description=__doc__)
    p.add_argument("--data", required=True, help="COCO instance JSON (crystal-rt convert makes one)")
    p.add_argument(
        "--images", help="folder the JSON's file_name values are relative to (default: its folder)"
    )
    p.add_argument("-o", "--output", type=output_dir, required=True, help="run folder (checkpoints, log)")
    p.add_argument("--val-data", help="a separate validation COCO JSON (default: hold out --val-fraction)")
    p.add_argument("--val-images", help="images folder for --val-data")
    p.add_argument("--val-fraction", type=float, help="images held out for validation (0.1; finetune 0.25)")
    p.add_argument("--arch", default="maskrcnn_resnet18_fpn", help="architecture (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=512, help="engine input size S (default 512)")
    p.add_argument("--no-clahe", dest="clahe", action="store_false", help="train (and deploy) without CLAHE")
    p.add_argument("--clip-limit", type=float, default=2.0, help="CLAHE clip limit (default 2.0)")
    p.add_argument("--tile-grid", type=parse_grid, default=(8, 8), help="CLAHE tiles COLSxROWS (default 8x8)")
    p.add_argument(
        "--slim", action="store_true", help="ResNet stages 1-3, 128-wide FPN, small heads (the demo model)"
    )
    p.add_argument(
        "--init",
        help="initial weights (never downloaded): a checkpoint, a torchvision .pth, or a core ONNX or "
        "engine folder (the shipped model: $(python -m crystal_rt.assets))",
    )
    p.add_argument("--norm", choices=("auto", "frozen", "batch"), default="auto", help="backbone norm layers")
    p.add_argument("--iterations", type=int, help="optimiser steps (2000; finetune 600)")
    p.add_argument("--batch-size", type=int, help="crops per step (8; finetune 4)")
    p.add_argument("--crop-size", type=int, default=256, help="training crop size (default 256)")
    p.add_argument(
        "--scale-range",
        type=parse_scale_range,
        help="crops rescaled by LOW,HIGH times the engine scale (0.75,1.33; finetune 0.5,2)",
    )
    p.add_argument(
        "--clahe-off",
        type=float,
        help="fraction of crops taken without CLAHE, so the model copes with either (0; finetune 0.2)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate (0.02; finetune 0.005)")
    p.add_argument("--warmup", type=int, help="warm-up steps (100; finetune 20)")
    p.add_argument("--val-every", type=int, help="validate and checkpoint every N steps (250; finetune 50)")
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="default",
        help="default: train as given; finetune: adapt a model (--init) to a few annotated images in "
        "minutes (frozen backbone, low LR, heavy augmentation, early stopping, 10-minute limit)",
    )
    p.add_argument(
        "--max-minutes", type=float, help="stop, validated and saved, after this long (finetune 10)"
    )
    p.add_argument(
        "--patience", type=int, help="stop after N validations without a better mAP@0.50 (finetune 4)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="PyTorch CPU threads (default: all cores)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--max-detections", type=int, default=50, help="engine K (default 50)")
    p.add_argument(
        "--score-threshold",
        type=threshold_or_auto,
        help="operating threshold stored in best.pt, in [0, 1], or auto: the best-F1 one on the "
        "validation images (0.5; finetune auto)",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.set_defaults(run=run)


def threshold_or_auto(text: str) -> float | str:
    """``--score-threshold``: a number in [0, 1], or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else unit_float(text)


def run(args: argparse.Namespace) -> int:
    require("torchvision", "Training", extra="train")

    from ..train.loop import Hooks, TrainConfig, train

    config = TrainConfig.for_recipe(
        args.recipe,
        data=args.data,
        images=args.images,
        output=str(args.output),
        val_data=args.val_data,
        val_images=args.val_images,
        val_fraction=args.val_fraction,
        arch=args.arch,
        input_size=args.input_size,
        clahe=args.clahe,
        clip_limit=args.clip_limit,
        tile_grid=args.tile_grid,
        slim=args.slim,
        init=args.init,
        norm=args.norm,
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        scale_range=args.scale_range,
        clahe_off=args.clahe_off,
        lr=args.lr,
        warmup=args.warmup,
        val_every=args.val_every,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        max_detections=args.max_detections,
        score_threshold=None if args.score_threshold == "auto" else args.score_threshold,
        pick_threshold=None if args.score_threshold is None else args.score_threshold == "auto",
        max_minutes=args.max_minutes,
        patience=args.patience,
    )
    if config.iterations <= config.warmup:
        warn(
            f"--iterations {config.iterations} is not longer than the warm-up "
            f"(--warmup {config.warmup}): the learning rate never reaches --lr; lower --warmup"
        )
    bar = progress()
    task = bar.add_task("training", total=None)
    log_plain = not err_console.is_terminal

    def on_cache(total: int) -> Any:
        cache_task = bar.add_task("preparing images", total=total)
        return lambda: bar.advance(cache_task)

    def on_start(start: int, total: int) -> None:
        bar.update(task, completed=start, total=total)

    def on_step(iteration: int, losses: dict[str, float]) -> None:
        bar.update(task, completed=iteration, description=f"training (loss {losses['loss']:.3f})")
        if log_plain and iteration % config.log_every == 0:
            note(f"step {iteration}/{config.iterations}: loss {losses['loss']:.4f} lr {losses['lr']:.5f}")

    def on_validation(iteration: int, metrics: dict[str, Any]) -> None:
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        mark = " (best so far)" if metrics.get("best") else ""
        bar.console.print(shown(f"validation at step {iteration}: {', '.join(parts)}{mark}"), highlight=False)

    hooks = Hooks(
        on_start=on_start,
        on_step=on_step,
        on_validation=on_validation,
        on_message=lambda text: bar.console.print(shown(text), highlight=False),
        on_cache=on_cache,
    )
    with bar:
        result = train(config, resume=args.resume, hooks=hooks)
    note(
        f"trained {result.iterations} steps in {result.seconds / 60:.1f} min; best checkpoint: {result.best}"
    )
    note(f"next: {next_command(result.best)}")
    return 0


def next_command(best: object) -> str:
    """The command to run on a trained checkpoint, as docs/training.md gives it (a test parses it)."""
    return f"crystal-rt build-engine {best} -o engines/"
