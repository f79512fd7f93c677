"""``crystal-rt demo``: generate drops, build an engine for this machine, detect, score, show latency.

Runs the model that ships with crystal-rt (``crystal_rt/assets/crystals.onnx``: a slim
ResNet-18-FPN Mask R-CNN trained on synthetic drops by ``scripts/make_demo_model.sh``). The drops
are generated with known crystals, so the demo also says how many it found. Needs only the base
install and ONNX Runtime (the ``cpu`` extra): no PyTorch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_import
from ..assets import demo_model
from ..build.engine import build_engine
from ..console import console, latency_table, note, shown
from ..errors import InvalidOption
from ..evaluate.run import AP_SCORE_THRESHOLD
from .options import output_dir

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    cv2 = lazy_import("cv2", "Image processing")
    np = lazy_import("numpy", "Array processing")


#: the latency table's count column: detections at the operating threshold / crystals generated
FOUND_HEADER = "found"

# (height, width, rgb, bit depth) of the generated drops, in turn: imager sizes and formats.
DEMO_IMAGES = ((1024, 1224, True, 8), (2028, 2532, False, 8), (768, 1024, False, 16), (600, 800, True, 8))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the shipped model on generated drop images", description=__doc__)
    p.add_argument(
        "-o",
        "--output",
        type=output_dir,
        default=Path("crystal-rt-demo"),
        help="folder for the engine, images and results (default: ./crystal-rt-demo)",
    )
    p.add_argument("--images", type=int, default=4, help="number of drop images to generate (default 4)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the generated drops (default 2026)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.set_defaults(run=run)


def _write_drops(folder: Path, count: int, seed: int) -> tuple[list[Path], list[Any]]:
    from ..data.synthetic import make_drop
    from ..evaluate.metrics import truth_from_masks

    paths, truths = [], []
    for i in range(count):
        height, width, rgb, depth = DEMO_IMAGES[i % len(DEMO_IMAGES)]
        drop = make_drop(seed + i, height, width, 12, rgb=rgb, bit_depth=depth)
        path = folder / f"drop-{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(drop.image, cv2.COLOR_RGB2BGR) if rgb else drop.image)
        paths.append(path)
        masks = np.stack(drop.masks) if drop.masks else np.zeros((0, height, width), dtype=bool)
        labels = np.ones(len(drop.masks), dtype=np.int64)
        truths.append(truth_from_masks(i, path.name, masks, labels))
    return paths, truths


def run(args: argparse.Namespace) -> int:
    from ..evaluate.metrics import evaluate
    from ..io.decode import read_image
    from ..io.writers import write_coco, write_json, write_overlay, write_points_csv
    from ..runtime.detector import STAGES, Detector

    if args.images < 1:
        raise InvalidOption("--images must be at least 1")
    out: Path = args.output
    images_dir, results_dir = out / "images", out / "results"
    for d in (images_dir, results_dir):
        d.mkdir(parents=True, exist_ok=True)
    with console.status("building an engine for this machine ..."):
        manifest = build_engine(demo_model(), out / "engine", name="crystals", threads=args.threads, log=note)
    console.print(
        f"engine: {manifest.backend} {manifest.backend_version} {manifest.precision}, "
        f"{manifest.model.arch} at {'x'.join(map(str, manifest.preprocess.input_hw))} px, "
        f"CLAHE {'on' if manifest.preprocess.clahe else 'off'} -> {shown(manifest.engine_path)}",
        highlight=False,
    )
    paths, truths = _write_drops(images_dir, args.images, args.seed)

    detector = Detector.load(out / "engine", threads=args.threads)
    detector.detect(paths[0])  # warm-up: first-run allocations are not representative
    results, scored = [], []
    for path in paths:
        t0 = time.perf_counter()
        pixels = read_image(path)
        decode_ms = (time.perf_counter() - t0) * 1e3
        # Scored at the AP threshold (every detection counts for mAP); timed and written at the
        # operating threshold, so the latency table is what a user's `detect` would see.
        low = detector.detect_pixels(pixels, name=str(path), score_threshold=AP_SCORE_THRESHOLD)
        result = detector.detect_pixels(pixels, name=str(path), decode_ms=decode_ms)
        write_json(result, results_dir / f"{path.stem}.json")
        write_overlay(pixels, result, results_dir / f"{path.stem}.overlay.png")
        results.append(result)
        scored.append(low)
    write_coco(results, results_dir / "coco_results.json")
    write_points_csv(results, results_dir / "points.csv")

    rows = [
        (Path(r.image or "").name, f"{len(r.instances)}/{len(truth.instances)}", r.timings_ms)
        for r, truth in zip(results, truths, strict=True)
    ]
    stages = (*STAGES, "total")
    console.print(
        latency_table("latency per stage (ms)", rows, FOUND_HEADER, stages, median=True, name_width=12)
    )
    report = evaluate(truths, scored, ("crystal",), score_threshold=detector.score_threshold)
    threshold = f"{detector.score_threshold:g}"
    console.print(
        f"{FOUND_HEADER}: detections at score >= {threshold} / crystals generated in the drop "
        "(a detection counts whether or not it matches one)",
        highlight=False,
    )
    console.print(
        f"on these {len(paths)} generated drops: mAP@0.50 {report.map50:.3f}, mAP@0.65 {report.map65:.3f} "
        f"(every detection down to score {AP_SCORE_THRESHOLD:g}, ranked by score, matched to the generated "
        f"crystals by mask IoU); precision {report.precision:.3f}, recall {report.recall:.3f} "
        f"(score >= {threshold}, mask IoU >= 0.5)",
        highlight=False,
    )
    console.print(
        f"results (JSON, overlays, coco_results.json, points.csv) in [bold]{shown(results_dir)}[/]",
        highlight=False,
    )
    return 0
