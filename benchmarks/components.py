"""Which of the generator's realism components a model finds hard: mAP per component, same run.

For each component of ``data/realism.py`` the drops are ones where that component fires (seeds
chosen with ``realism.fires``), drawn with that component alone on, so a row differs from the
``none`` row (the generator before the components) only by that component; ``dense_small`` rows
are native-scale tiles, ``sensor_bits`` rows are 12-bit data in 16-bit PNGs with sBIT, and the
``all`` row is the default generator. Every model given is scored on the same drops.

    python benchmarks/components.py MODEL.onnx [MODEL2.onnx ...] [--drops 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import write_json

ROWS = ("none", "plastic", "reflections", "round_objects", "skins", "cells", "optics", "sensor_bits",
        "dense_small", "all")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="core ONNX files (or checkpoints) to score")
    p.add_argument("--drops", type=int, default=20, help="drops per row (default 20)")
    p.add_argument("--size", default="768x1024", help="HxW of the drops (default 768x1024)")
    p.add_argument("--seed", type=int, default=500, help="first seed tried (default 500)")
    p.add_argument("--json", type=Path)
    return p.parse_args()


def write_row(folder: Path, row: str, args: argparse.Namespace) -> Path:
    from crystal_rt.data import realism
    from crystal_rt.data.builder import CocoBuilder
    from crystal_rt.data.realism import Components
    from crystal_rt.data.synth_writer import encode_png
    from crystal_rt.data.synthetic import make_drop

    height, width = (int(v) for v in args.size.lower().split("x"))
    parts = {"none": Components.none(), "all": Components()}.get(row) or Components.parse(row)
    images = folder / "images"
    images.mkdir(parents=True)
    builder = CocoBuilder(("crystal",))
    seed, made = args.seed, 0
    while made < args.drops:
        seed += 1
        if row in realism.CHANCE and realism.fires(parts, row, seed) is None:
            continue
        kwargs: dict[str, Any] = {"components": parts}
        h, w = height, width
        if row == "dense_small":
            kwargs["dense"], h, w = True, 768, 768
        if row == "sensor_bits":
            kwargs.update(bit_depth=16, significant_bits=12)
        drop = make_drop(seed, h, w, 12, **kwargs)
        name = f"drop_{made:03d}.png"
        (images / name).write_bytes(encode_png(drop))
        image_id = builder.add_image(f"images/{name}", w, h)
        for mask in drop.masks:
            builder.add_mask(image_id, mask, "crystal")
        made += 1
    path = folder / "annotations.json"
    builder.build(images_dir=folder).write(path)
    return path


def main() -> None:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.evaluate.run import evaluate_detector, open_model

    args = parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {str(m): {} for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for row in ROWS:
            t0 = time.perf_counter()
            dataset = load_coco(write_row(Path(tmp) / row, row, args))
            for model in args.models:
                with open_model(str(model)) as detector:
                    report, _ = evaluate_detector(detector, dataset)
                data = report.to_dict()
                results[str(model)][row] = {k: data[k] for k in ("map50", "map65", "precision", "recall")}
            scores = [results[str(m)][row] for m in args.models]
            cells = "  ".join(f"{s['map50']:.3f}/{s['map65']:.3f}" for s in scores)
            print(f"{row:<14} {cells}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nmAP@0.50/mAP@0.65 per row; models: " + ", ".join(str(m) for m in args.models))
    write_json(args.json, {"drops": args.drops, "size": args.size, "results": results})


if __name__ == "__main__":
    main()
