"""``crystal-rt demo``: generate drops, build an engine for this machine, detect, show latency.

No trained demo model ships with this version yet, so the demo exports a small Mask R-CNN with
random weights (needs the export extra): it exercises the whole pipeline — export with parity
validation, engine build, CLAHE, letterbox, inference, mask pasting, writers — but its
detections are meaningless, and it says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEMO_ARCH = "maskrcnn_resnet18_fpn"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on generated drop images", description=__doc__)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("crystal-rt-demo"),
        help="folder for the model, engine, images and results (default: ./crystal-rt-demo)",
    )
    p.add_argument("--images", type=int, default=3, help="number of drop images to generate (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=512)
    p.set_defaults(run=run)


def _random_model(out: Path, seed: int, input_size: int) -> Path:
    from .._lazy import require

    torch = require("torch", "The demo (it exports a random-weight model, as no trained one ships yet)")
    from ..export.models import build_maskrcnn, save_checkpoint
    from ..spec import ModelSpec, PreprocessSpec

    torch.manual_seed(seed)
    pre = PreprocessSpec(input_size=input_size)
    spec = ModelSpec(arch=DEMO_ARCH, num_classes=2, max_detections=50)
    options = {"rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 200}
    model = build_maskrcnn(DEMO_ARCH, 2, preprocess=pre, max_detections=spec.max_detections, **options)
    return save_checkpoint(out / "demo-random.pt", model, spec, pre, model_kwargs=options)


def run(args: argparse.Namespace) -> int:
    import statistics
    import time

    import cv2
    from rich.table import Table

    from ..data.synthetic import make_drop
    from ..io.decode import read_image
    from ..io.writers import write_coco, write_json, write_overlay, write_points_csv
    from ..runtime.build import build_engine
    from ..runtime.detector import STAGES, Detector
    from .console import console, info

    out: Path = args.output
    images_dir, results_dir = out / "images", out / "results"
    for d in (images_dir, results_dir):
        d.mkdir(parents=True, exist_ok=True)
    console.print(
        "[bold yellow]No trained demo model ships with this version:[/] exporting a "
        f"{DEMO_ARCH} with RANDOM weights. Its detections are meaningless; this demo shows the "
        "pipeline and its latency, not accuracy.",
        highlight=False,
    )
    with console.status("exporting the model to ONNX and validating it against PyTorch ..."):
        checkpoint = _random_model(out / "model", args.seed, args.input_size)
        manifest = build_engine(checkpoint, out / "engine", name="demo", log=info)
    console.print(
        f"engine: {manifest.backend} {manifest.backend_version} {manifest.precision} "
        f"at {manifest.engine_path}",
        highlight=False,
    )

    sizes = [(1024, 1224), (2028, 2532), (512, 512)]
    paths = []
    for i in range(args.images):
        h, w = sizes[i % len(sizes)]
        path = images_dir / f"drop-{i}.png"
        cv2.imwrite(str(path), make_drop(args.seed + i, h, w).image)
        paths.append(path)

    detector = Detector.load(out / "engine")
    detector.detect(paths[0])  # warm-up: first-run allocations are not representative
    results = []
    for path in paths:
        t0 = time.perf_counter()
        pixels = read_image(path)
        result = detector.detect_pixels(pixels, name=str(path), decode_ms=(time.perf_counter() - t0) * 1e3)
        write_json(result, results_dir / f"{path.stem}.json")
        write_overlay(pixels, result, results_dir / f"{path.stem}.overlay.png")
        results.append(result)
    write_coco(results, results_dir / "coco_results.json")
    write_points_csv(results, results_dir / "points.csv")

    table = Table(title="latency per stage (ms)", title_justify="left")
    table.add_column("image", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("n", justify="right", min_width=2)
    for stage in (*STAGES, "total"):
        table.add_column(stage, justify="right", min_width=len(stage), no_wrap=True)
    for r in results:
        table.add_row(
            Path(r.image or "").name,
            str(len(r.instances)),
            *(f"{r.timings_ms[s]:.1f}" for s in (*STAGES, "total")),
        )
    table.add_row(
        "median",
        "",
        *(f"{statistics.median(r.timings_ms[s] for r in results):.1f}" for s in (*STAGES, "total")),
    )
    console.print(table)
    console.print(
        f"results (JSON, overlays, coco_results.json, points.csv) in [bold]{results_dir}[/]", highlight=False
    )
    return 0
