"""``crystal-rt detect ENGINE IMAGE_OR_DIR... -o OUT``: detect and write JSON, COCO, CSV and overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..io import RESULT_FORMATS as FORMATS
from .options import add_score_threshold, add_stages, output_dir


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(unknown) or text!r}; choose from {','.join(FORMATS)}"
        )
    return formats


def add_parser(sub: Any) -> None:
    p = sub.add_parser("detect", help="detect crystals in images with an engine", description=__doc__)
    p.add_argument("engine", help="engine folder, NAME.manifest.json, or the DIR/NAME prefix")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders of images")
    p.add_argument("-o", "--output", type=output_dir, required=True, help="folder for the results")
    p.add_argument(
        "--format",
        type=parse_formats,
        default=list(FORMATS),
        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)",
    )
    add_score_threshold(p, "keep detections scoring at least this, in [0, 1] (default: the engine's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    add_stages(p)
    p.set_defaults(run=run)


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def run(args: argparse.Namespace) -> int:
    from time import perf_counter

    from rich.markup import escape

    from ..errors import CrystalRtError
    from ..io.decode import list_images, read_image
    from ..io.writers import write_coco, write_json, write_overlay, write_points_csv
    from ..runtime.detector import STAGES, Detector
    from ..runtime.result import DetectionResult
    from .console import console, err_console, latency_table, progress

    detector = Detector.load(
        args.engine, score_threshold=args.score_threshold, threads=args.threads, stages=args.stages
    )
    paths = list_images(args.inputs)
    if not paths:
        raise CrystalRtError("no images found in " + ", ".join(map(str, args.inputs)))
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    results: list[DetectionResult] = []
    failed: list[tuple[Path, str]] = []
    with progress() as bar:
        task = bar.add_task("detecting", total=len(paths))
        for path, stem in zip(paths, _unique_stems(paths), strict=False):
            try:
                t0 = perf_counter()
                pixels = read_image(path, max_pixels=detector.max_pixels)
                result = detector.detect_pixels(pixels, name=str(path), decode_ms=(perf_counter() - t0) * 1e3)
                t1 = perf_counter()
                if "json" in args.format:
                    write_json(result, out / f"{stem}.json")
                if "overlay" in args.format:
                    write_overlay(pixels, result, out / f"{stem}.overlay.png")
                result.timings_ms["encode"] = (perf_counter() - t1) * 1e3
                results.append(result)
            except CrystalRtError as exc:
                failed.append((path, exc.message))
                err_console.print(f"[yellow]skipped[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            bar.advance(task)
    if "coco" in args.format:
        write_coco(results, out / "coco_results.json")
    if "csv" in args.format:
        write_points_csv(results, out / "points.csv")

    rows = [(Path(r.image or "").name, str(len(r.instances)), r.timings_ms) for r in results]
    console.print(
        latency_table(f"{len(results)} image(s) -> {out} (ms)", rows, "instances", (*STAGES, "total"))
    )
    if failed:
        err_console.print(f"[red]{len(failed)} of {len(paths)} image(s) could not be read[/]")
        return 1
    return 0
