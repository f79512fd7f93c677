"""``crystal-rt watch ENGINE IN_DIR -o OUT_DIR``: detect every image that lands in a folder, once.

A file is processed when its size is > 0, unchanged between two polls and its mtime is at least
--stable-seconds old. Results: OUT_DIR/<name>.json (the input's full name + .json; atomic), rows in
OUT_DIR/points.csv, a journal OUT_DIR/.crystal-rt-journal.jsonl (restarts never redo a file);
unreadable, too large or long-empty files are recorded in OUT_DIR/quarantine/ (NAME.reason.txt and
a copy; the file itself is left in IN_DIR). One watcher per OUT_DIR (a lock; a second is refused).
The folder is polled (robust on network shares). Ctrl-C finishes the current file and stops.
With --once the exit status is 1 when a file failed (error or quarantined), else 0.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from ..console import err_console, note, shown
from ..serve.watch import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PATTERNS,
    WATCH_FORMATS,
    Outcome,
    Watcher,
    WatchOptions,
)  # light: no numpy, cv2 or onnxruntime
from .options import (
    add_bit_depth,
    add_score_threshold,
    add_stages,
    add_tiling,
    detector_from_args,
    output_dir,
)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in WATCH_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(unknown) or text!r}; choose from {','.join(WATCH_FORMATS)}"
        )
    return tuple(dict.fromkeys(["json", *formats]))  # the per-image JSON is always written


def parse_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise argparse.ArgumentTypeError("give at least one pattern, e.g. '*.png,*.tif'")
    return patterns


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "watch", help="detect images as they land in a folder (hot folder)", description=__doc__
    )
    p.add_argument("engine", help="engine folder, NAME.manifest.json, or the DIR/NAME prefix")
    p.add_argument("in_dir", type=Path, help="folder the imager writes images into")
    p.add_argument(
        "-o", "--output", type=output_dir, required=True, help="folder for results, journal and quarantine"
    )
    p.add_argument("--recursive", action="store_true", help="also watch sub-folders")
    p.add_argument(
        "--pattern",
        type=parse_patterns,
        default=DEFAULT_PATTERNS,
        help=f"comma-separated file name patterns, case-insensitive (default {','.join(DEFAULT_PATTERNS)})",
    )
    p.add_argument(
        "--stable-seconds",
        type=_non_negative,
        default=10.0,
        help="a file must be unmodified this long before it is read (default %(default)g)",
    )
    p.add_argument(
        "--poll", type=_positive, default=1.0, help="seconds between folder scans (default %(default)g)"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="process what is there and stable (two polls apart), then exit; files younger than "
        "--stable-seconds are left for the next run (cron)",
    )
    p.add_argument(
        "--formats",
        "--format",
        dest="formats",
        type=parse_formats,
        default=("json", "csv"),
        help=f"comma-separated subset of {','.join(WATCH_FORMATS)} (default json,csv; json always written)",
    )
    p.add_argument(
        "--max-file-mb",
        type=_positive,
        default=DEFAULT_MAX_BYTES / 2**20,
        help="files larger than this are quarantined unread (default %(default)g)",
    )
    p.add_argument(
        "--empty-grace-seconds",
        type=_non_negative,
        default=60.0,
        help="a file still empty (0 bytes) after this long is quarantined (default %(default)g)",
    )
    p.add_argument("--um-per-px", type=_positive, help="pixel size, for the dispense target in micrometres")
    add_score_threshold(p, "keep detections scoring at least this, in [0, 1] (default: the engine's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    add_stages(p)
    add_tiling(p)
    add_bit_depth(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    detector = detector_from_args(args)
    options = WatchOptions(
        in_dir=args.in_dir,
        out_dir=args.output,
        recursive=args.recursive,
        patterns=tuple(args.pattern),
        stable_seconds=args.stable_seconds,
        poll_seconds=args.poll,
        formats=tuple(args.formats),
        um_per_px=args.um_per_px,
        max_bytes=int(args.max_file_mb * 2**20),
        empty_grace_seconds=args.empty_grace_seconds,
    )

    def report(outcome: Outcome) -> None:
        name = shown(outcome.path)  # one line: a name holding a newline cannot forge another
        if outcome.status == "ok":
            extra = f" ({shown(outcome.message)})" if outcome.message else ""
            err_console.print(
                f"[green]done[/] {name}: {outcome.instances} instance(s){extra}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            colour = "yellow" if outcome.status == "quarantined" else "red"
            err_console.print(
                f"[{colour}]{outcome.status}[/] {name}: {shown(outcome.message or '')}",
                highlight=False,
                soft_wrap=True,
            )

    try:
        watcher = Watcher(detector, options, report=report)
    except BaseException:
        detector.close()
        raise
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        note("stopping after the current file (Ctrl-C again to abort)")
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not args.once:
            note(f"watching {options.in_dir} -> {options.out_dir} (Ctrl-C stops)")
        stats = watcher.run(stop, once=args.once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        watcher.close()
        detector.close()
    note(
        f"{stats.ok} processed, {stats.quarantined} quarantined, {stats.errors} error(s) -> {options.out_dir}"
    )
    if stats.points_pending:
        err_console.print("[red]points.csv could not be written[/]; it is rebuilt on the next run")
    return 1 if args.once and stats.failed else 0
