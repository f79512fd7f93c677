"""``crystal-rt synth -n N -o DIR``: synthetic drop images with exact instance masks (COCO JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from ..console import note, progress
from .options import output_dir


def parse_size(text: str) -> tuple[int, int] | None:
    """``WxH`` (e.g. 1224x1024) -> (height, width); ``random`` -> None."""
    if text == "random":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or 'random', not {text!r}") from None
    return height, width


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "synth", help="generate synthetic crystallization-drop images with masks", description=__doc__
    )
    p.add_argument("-n", "--count", type=int, required=True, help="number of images")
    p.add_argument(
        "-o", "--output", type=output_dir, required=True, help="folder for images/ and annotations.json"
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0): same seed, same images")
    p.add_argument(
        "--size", type=parse_size, default=None, help="WIDTHxHEIGHT, or 'random' (default: 512 .. 2532x2028)"
    )
    p.add_argument("--colour", choices=("gray", "rgb", "mixed"), default="mixed", help="default: mixed")
    p.add_argument("--bit-depth", choices=("8", "16", "mixed"), default="mixed", help="default: mixed")
    p.add_argument("--max-crystals", type=int, default=12, help="crystals per drop, at most (default 12)")
    p.add_argument(
        "--components",
        default="all",
        help="what real drops contain, besides crystals: all (default), none (the generator before "
        "them), a list, or all,-name; names: plastic, reflections, round_objects, skins, cells, optics, "
        "sensor_bits, dense_small (docs/synthetic.md)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.realism import Components
    from ..data.synth_writer import SynthOptions, write_synthetic

    options = SynthOptions(
        count=args.count,
        seed=args.seed,
        size=args.size,
        colour=args.colour,
        bit_depth=args.bit_depth,
        max_crystals=args.max_crystals,
        components=Components.parse(args.components),
    )
    with progress() as bar:
        task = bar.add_task("generating drops", total=args.count)
        path = write_synthetic(args.output, options, on_image=lambda: bar.advance(task))
    note(f"wrote {args.count} images and {path}")
    note(f"next: {next_command(path)}")
    return 0


def next_command(data: object) -> str:
    """The command to run on the generated set (a test parses it)."""
    return f"crystal-rt train --data {data} -o run/"
