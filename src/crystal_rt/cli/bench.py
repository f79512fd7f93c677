"""``crystal-rt bench ENGINE``: per-stage latency percentiles, engine-only time, cold start, peak RSS,
throughput with 1..N threads, and the environment, as tables, JSON (``--json``) and a PNG (``--plot``).

Images are read into memory first (the decode stage decodes bytes, no disk I/O); ``--synthetic N``
generates N drops instead. Cold start runs in fresh ``python -c`` processes that never import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..bench.environment import usable_cores
from ..bench.report import latency_tables, write_json, write_plot
from ..bench.runner import BenchConfig, load_images, run_bench, synthetic_images
from ..console import console, err_console, note, show_library_warnings, shown
from ..errors import CrystalRtError, InvalidOption
from .options import add_bit_depth, add_score_threshold, add_stages, add_tiling, report_file, tiling_from_args


def _positive_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (as ``synth --size`` and image tools write it) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1224x1024, got {text!r}") from None
    if height < 16 or width < 16:
        raise argparse.ArgumentTypeError(f"image too small: {text}")
    return height, width


def _size_hxw(text: str) -> tuple[int, int]:
    """The old ``--synthetic-size HEIGHTxWIDTH`` (kept as it was) -> (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 1024x1224, got {text!r}") from None
    return _size(f"{width}x{height}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark an engine: latency, cold start, memory", description=__doc__)
    p.add_argument("engine", help="engine folder, NAME.manifest.json, or the DIR/NAME prefix")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    src.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic drops (default 4)")
    p.add_argument(
        "--size",
        type=_size,
        dest="synthetic_size",
        default=(1024, 1224),
        metavar="WxH",
        help="size of the synthetic drops, WIDTHxHEIGHT as in synth --size (default 1224x1024)",
    )
    p.add_argument(
        "--synthetic-size",
        type=_size_hxw,
        dest="synthetic_size",
        metavar="HxW",
        help="the same as HEIGHTxWIDTH (the old spelling, kept: 1024x1224 is --size 1224x1024)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic drops (default 0)")
    p.add_argument("--runs", type=int, default=10, help="timed passes over the images (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    p.add_argument(
        "--threads", type=int, help="ONNX Runtime intra-op threads for latency (default: all cores)"
    )
    p.add_argument(
        "--threads-sweep",
        type=_positive_list,
        metavar="1,2,...",
        help="throughput with these numbers of threads calling one Detector (default: 1..cores)",
    )
    p.add_argument(
        "--cold-starts", type=int, default=3, help="fresh-process cold starts (default 3; 0 skips)"
    )
    add_score_threshold(p, "detection threshold, in [0, 1] (default: the engine's)")
    p.add_argument("--json", type=report_file, metavar="OUT.json", help="write the full report here")
    p.add_argument("--plot", type=report_file, metavar="OUT.png", help="write a latency/throughput plot here")
    add_stages(p)
    add_tiling(p)
    add_bit_depth(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0 or args.cold_starts < 0:
        raise InvalidOption("--runs must be >= 1, --warmup and --cold-starts >= 0")
    if args.images:
        images = load_images(args.images)
        if not images:
            raise InvalidOption("no images found in " + ", ".join(map(str, args.images)))
    else:
        count = 4 if args.synthetic is None else args.synthetic
        if count < 1:
            raise InvalidOption("--synthetic must be >= 1")
        height, width = args.synthetic_size
        note(f"generating {count} synthetic drop(s) of {height}x{width}")
        images = synthetic_images(count, height, width, seed=args.seed)
    sweep = args.threads_sweep or list(range(1, usable_cores() + 1))
    config = BenchConfig(
        engine=Path(args.engine),
        images=images,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        threads_sweep=sweep,
        cold_starts=args.cold_starts,
        score_threshold=args.score_threshold,
        stages=args.stages,
        tiling=tiling_from_args(args),
        bit_depth=args.bit_depth,
        command=list(sys.argv),
        log=note,
    )
    report = run_bench(config)
    console.print(latency_tables(report))
    if args.json:
        note(f"wrote {write_json(report, args.json)}")
    if args.plot:
        note(f"wrote {write_plot(report, args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m crystal_rt.cli.bench ENGINE ...``: the same command, without the crystal-rt entry point."""

    show_library_warnings()
    parser = argparse.ArgumentParser(prog="crystal-rt")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        code: int = args.run(args)
    except CrystalRtError as exc:
        err_console.print(f"[bold red]error:[/] {shown(exc)}", highlight=False, soft_wrap=True)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
