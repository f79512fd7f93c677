"""``crystal-rt convert INPUT... -o OUT.json``: COCO, Labelme or mask folders to one COCO JSON.

Inputs may be COCO JSON files, Labelme JSON files or folders of them, and mask-folder roots
(NAME/images/NAME.png + NAME/masks/*.png); ``--format auto`` tells them apart by content.
In OUT.json, ``file_name`` is relative to OUT.json's folder where the image lies under it, and
absolute otherwise, so ``crystal-rt train``/``evaluate`` find the images without ``--images`` (its
default is the JSON's folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..console import console, shown
from .options import output_file

FORMAT_CHOICES = ("auto", "coco", "labelme", "masks")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert COCO, Labelme or mask-folder annotations to one COCO JSON",
        description=__doc__,
    )
    p.add_argument(
        "inputs", nargs="+", type=Path, help="COCO/Labelme .json files, Labelme folders, mask folders"
    )
    p.add_argument("-o", "--output", type=output_file, required=True, help="the COCO JSON to write")
    p.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="auto",
        help="input format (default: auto, from the content)",
    )
    p.add_argument(
        "--images-out",
        type=Path,
        help="folder for images embedded in Labelme files without a readable imagePath "
        "(default: OUT_images next to OUT.json)",
    )
    p.add_argument(
        "--class-name",
        default="crystal",
        help="category of mask-folder instances (default: crystal; COCO and Labelme carry their own)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert

    dataset = convert(args.inputs, args.output, args.format, args.images_out, args.class_name)
    instances = sum(len(dataset.annotations(record.id)) for record in dataset.images)
    names = ", ".join(dataset.class_names) or "none"
    console.print(
        shown(
            f"{len(dataset)} image(s), {instances} instance(s), {len(dataset.class_names)} class(es) "
            f"({names}) -> {dataset.source}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    absolute = sum(Path(record.file_name).is_absolute() for record in dataset.images)
    relative = len(dataset) - absolute
    where = [f"{relative} relative to {dataset.images_dir}"] if relative else []
    where += [f"{absolute} absolute (outside that folder)"] if absolute else []
    console.print(
        shown(f"file names: {', '.join(where) or 'none'}; train and evaluate find them without --images"),
        highlight=False,
        soft_wrap=True,
    )
    console.print(shown(f"next: {next_command(dataset.source)}"), highlight=False, soft_wrap=True)
    return 0


def next_command(data: Path | None) -> str:
    """The command to run on a converted dataset (a test checks it parses)."""
    return f"crystal-rt train --data {data} -o run/"
