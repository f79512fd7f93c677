"""``crystal-rt detect ENGINE IMAGE_OR_DIR... -o OUT``: detect and write JSON, COCO, CSV and overlays.

Each image is named by its path relative to the folder the inputs share (``A1.jpg`` for
``detect E plate1/``, ``plate1/A1.jpg`` and ``plate2/A1.jpg`` for ``detect E plate1 plate2``), and
its results are ``OUT/<name>.json`` and ``OUT/<name>.overlay.jpg`` (JPEG inputs) or
``.overlay.png`` (the others; ``--overlay-format``), the full name, as ``watch`` writes them. An
output folder that already holds results is merged by image: the images of this run replace their
own rows in ``points.csv`` and entries in ``coco_results.json`` and their own files (a format not
asked for this time is removed for them), the other images' results stay. ``--contact-sheet``
adds ``OUT/contact_sheet.jpg``: every image of the run, small, with its name and crystal count.
``--summary-json FILE`` (``-``: stdout) writes what the table shows for scripts; ``--quiet``
prints only the images that could not be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from time import perf_counter
from typing import Any

from ..console import console, distinct_names, err_console, latency_table, note, progress, shown
from ..errors import CrystalRtError, InvalidOption, OutputNotWritten
from ..io import RESULT_FORMATS as FORMATS
from ..serve.watch import fit_name
from .options import (
    add_bit_depth,
    add_score_threshold,
    add_stages,
    add_tiling,
    add_um_per_px,
    detector_from_args,
    output_dir,
    output_file,
)

#: light copies of crystal_rt.io.writers' choices (the parser does not import OpenCV; a test keeps them equal)
OVERLAY_FORMATS = ("auto", "png", "jpeg")
OVERLAY_LABELS = ("off", "score", "index")
OVERLAY_SUFFIXES = (".overlay.png", ".overlay.jpg")
CONTACT_SHEET = "contact_sheet.jpg"
#: side of a drop's picture on the contact sheet, pixels
SHEET_SIDE = 256


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
        "--formats",
        "--format",
        dest="format",
        type=parse_formats,
        default=list(FORMATS),
        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)",
    )
    p.add_argument("--recursive", action="store_true", help="also detect in the folders' sub-folders")
    p.add_argument(
        "--overlay-format",
        choices=OVERLAY_FORMATS,
        default="auto",
        help="overlay files: auto (default: JPEG for JPEG inputs, PNG for the others), png or jpeg",
    )
    p.add_argument(
        "--overlay-labels",
        choices=OVERLAY_LABELS,
        default="score",
        help="text beside each instance on the overlays: score ('crystal 0.97', the default), index "
        "(its index in the JSON and points.csv: short, for dense drops) or off",
    )
    p.add_argument(
        "--contact-sheet",
        action="store_true",
        help=f"also write OUT/{CONTACT_SHEET}: every image of this run, small, with its name and crystal "
        "count (a plate at a glance)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the images that could not be read")
    p.add_argument(
        "--summary-json",
        type=summary_target,
        metavar="FILE",
        help="write a summary for scripts: per image its instance count, files and timings, and the "
        "images that failed with why; '-' writes it to stdout instead of the table",
    )
    add_score_threshold(p, "keep detections scoring at least this, in [0, 1] (default: the engine's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    add_stages(p)
    add_um_per_px(p)
    add_tiling(p)
    add_bit_depth(p)
    p.set_defaults(run=run)


def summary_target(text: str) -> Path | str:
    """``--summary-json``: ``-`` (stdout) or a file to write."""
    return "-" if text == "-" else output_file(text)


def image_names(paths: list[Path]) -> list[str]:
    """Each image's path relative to the folder all of them share (POSIX separators): unique, and
    the same whenever the same folders are given."""

    if not paths:
        return []
    absolute = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return [p.relative_to(common).as_posix() for p in absolute]


def _output_path(out: Path, name: str, suffix: str) -> Path:
    rel = Path(name)
    return out / rel.parent / f"{fit_name(rel.name)}{suffix}"


def _merge_points(path: Path, done: set[str], new_rows: list[list[str]]) -> None:
    """points.csv: the rows of images not in ``done`` kept, then this run's rows."""

    from ..io.writers import POINT_FIELDS, atomic_write_bytes, csv_text, points_csv_bytes

    kept: list[list[str]] = []
    if path.is_file():
        cells = {csv_text(name) for name in done} | done
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.DictReader(fh):
                if row.get("image") not in cells:
                    kept.append([row.get(field) or "" for field in POINT_FIELDS])
    elif not new_rows:
        return
    atomic_write_bytes(path, points_csv_bytes([*kept, *new_rows]))


def _merge_coco(path: Path, done: set[str], results: list[Any]) -> None:
    """coco_results.json: the entries of images not in ``done`` kept, then this run's; image ids
    numbered 1.. over the file names in that order."""

    from ..io.writers import atomic_write_bytes, coco_results

    entries: list[dict[str, object]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_bytes())
        except (OSError, ValueError):
            old = []
        entries = (
            [e for e in old if isinstance(e, dict) and e.get("file_name") not in done]
            if isinstance(old, list)
            else []
        )
    elif not results:
        return
    for result in results:
        for entry in coco_results([result]):
            entry["file_name"] = result.image  # the relative path: unique, unlike the base name
            entries.append(entry)
    ids: dict[object, int] = {}
    for entry in entries:
        entry["image_id"] = ids.setdefault(entry.get("file_name"), len(ids) + 1)
    atomic_write_bytes(path, (json.dumps(entries) + "\n").encode())


def crystal_count(result: Any) -> int:
    """Instances other than a ``drop`` class (CHiMP-style models find the drop too)."""
    return sum(inst.label_name != "drop" for inst in result.instances)


def _detect_one(
    detector: Any, path: Path, name: str, out: Path, args: argparse.Namespace
) -> tuple[Any, dict[str, str], Any]:
    """Detect in one image and write its files (a format not asked for is removed for it): the
    result, the files written (relative to ``out``) and its contact-sheet picture (or None)."""

    from ..io.decode import read_image_info
    from ..io.writers import overlay_suffix, render_overlay, thumbnail, write_json, write_overlay

    t0 = perf_counter()
    image = read_image_info(path, max_pixels=detector.max_pixels, name=name)
    result = detector.detect_pixels(image, name=name, decode_ms=(perf_counter() - t0) * 1e3)
    t1 = perf_counter()
    files: dict[str, str] = {}
    overlay = overlay_suffix(name, args.overlay_format)
    try:
        for fmt, suffix in (("json", ".json"), *(("overlay", s) for s in OVERLAY_SUFFIXES)):
            target = _output_path(out, name, suffix)
            if fmt not in args.format or suffix not in (".json", overlay):  # an older run's would be stale
                target.unlink(missing_ok=True)
                continue
            if fmt == "json":
                write_json(result, target)
            else:
                write_overlay(image.pixels, result, target, labels=args.overlay_labels)
            files[fmt] = target.relative_to(out).as_posix()
    except OSError as exc:
        raise OutputNotWritten(f"cannot write its results: {exc.strerror or exc}", path=name) from exc
    result.timings_ms["encode"] = (perf_counter() - t1) * 1e3
    picture = None
    if args.contact_sheet:  # thumbnails only are kept: a plate of 96 drops stays small in memory
        picture = thumbnail(render_overlay(image.pixels, result, labels="off"), SHEET_SIDE)
    return result, files, picture


def run(args: argparse.Namespace) -> int:
    from ..io.decode import list_images
    from ..io.writers import point_rows
    from ..results.detection import DetectionResult
    from ..runtime.detector import STAGES

    detector = detector_from_args(args)
    seen: set[Path] = set()
    paths = []
    for path in list_images(args.inputs, recursive=args.recursive):  # each file once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            paths.append(path)
    if not paths:
        detector.close()
        hint = ""
        if not args.recursive:
            from ..io.decode import images_below

            below = sum(images_below(p)[0] for p in args.inputs if p.is_dir())
            hint = f"; {below} image(s) in sub-folders: add --recursive" if below else ""
        raise InvalidOption("no images found in " + ", ".join(map(str, args.inputs)) + hint)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    results: list[DetectionResult] = []
    written: list[dict[str, str]] = []
    pictures: list[Any] = []
    failed: list[tuple[str, CrystalRtError]] = []
    if not args.quiet:
        note(f"detecting in {len(paths)} image(s) -> {out}")
    bar = progress(quiet=args.quiet)
    try:
        with bar:
            task = bar.add_task("detecting", total=len(paths))
            for path, name in zip(paths, image_names(paths), strict=True):
                try:
                    result, files, picture = _detect_one(detector, path, name, out, args)
                    results.append(result)
                    written.append(files)
                    pictures.append(picture)
                except CrystalRtError as exc:
                    failed.append((name, exc))
                    err_console.print(f"[yellow]skipped[/] {shown(exc)}", highlight=False, soft_wrap=True)
                bar.advance(task)
    finally:
        detector.close()
    done = {r.image or "" for r in results}
    try:
        if "coco" in args.format or (out / "coco_results.json").is_file():
            _merge_coco(out / "coco_results.json", done, results if "coco" in args.format else [])
        if "csv" in args.format or (out / "points.csv").is_file():
            rows = [row for r in results for row in point_rows(r)] if "csv" in args.format else []
            _merge_points(out / "points.csv", done, rows)
    except OSError as exc:
        raise OutputNotWritten(f"cannot write the results table: {exc.strerror or exc}", path=out) from exc

    sheet = _write_contact_sheet(out, results, pictures) if args.contact_sheet and results else None
    if args.summary_json is not None:
        _write_summary(args.summary_json, out, results, written, failed, sheet)
    if results and not args.quiet and args.summary_json != "-":  # no empty table when every file failed
        table = [(r.image or "", str(len(r.instances)), r.timings_ms) for r in results]
        title = f"{len(results)} image(s) -> {shown(out)} (ms)"
        console.print(latency_table(title, table, "instances", (*STAGES, "total")))
    if sheet is not None and not args.quiet:
        note(f"contact sheet: {sheet}")
    if failed:
        err_console.print(f"[red]{len(failed)} of {len(paths)} image(s) could not be read[/]")
        return 1
    return 0


def _write_contact_sheet(out: Path, results: list[Any], pictures: list[Any]) -> Path:
    from ..io.writers import caption_chars, write_contact_sheet

    counts = [f"{crystal_count(r)}: " for r in results]
    room = caption_chars(SHEET_SIDE) - max(map(len, counts))
    names = distinct_names([r.image or "" for r in results], room)
    tiles = [
        (picture, f"{count}{name}") for count, name, picture in zip(counts, names, pictures, strict=True)
    ]
    try:
        return write_contact_sheet(tiles, out / CONTACT_SHEET, side=SHEET_SIDE)
    except OSError as exc:
        raise OutputNotWritten(f"cannot write the contact sheet: {exc.strerror or exc}", path=out) from exc


def _write_summary(
    target: Path | str,
    out: Path,
    results: list[Any],
    written: list[dict[str, str]],
    failed: list[tuple[str, CrystalRtError]],
    sheet: Path | None,
) -> None:
    """The run for scripts: every image's counts, files and timings, and every failure with why."""
    from ..io.writers import atomic_write_bytes

    summary = {
        "output": str(out),
        "images": len(results) + len(failed),
        "succeeded": len(results),
        "failed": len(failed),
        "instances": sum(len(r.instances) for r in results),
        "results": [
            {
                "image": r.image,
                "instances": len(r.instances),
                "crystals": crystal_count(r),
                "files": files,
                "timings_ms": {k: round(v, 3) for k, v in r.timings_ms.items()},
            }
            for r, files in zip(results, written, strict=True)
        ],
        "failures": [
            {"image": name, "error": type(exc).__name__, "message": exc.message} for name, exc in failed
        ],
        "contact_sheet": None if sheet is None else sheet.relative_to(out).as_posix(),
    }
    text = json.dumps(summary, indent=2) + "\n"
    if target == "-":
        print(text, end="")  # noqa: T201 - the data itself, on stdout, for a pipe
        return
    try:
        atomic_write_bytes(target, text.encode())
    except OSError as exc:
        raise OutputNotWritten(f"cannot write the summary: {exc.strerror or exc}", path=target) from exc
