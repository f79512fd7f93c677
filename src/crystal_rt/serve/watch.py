"""The hot-folder watcher: detect every image that lands in IN_DIR exactly once, results in OUT_DIR.

How a file is picked up (as imager integrations do): it matches one of the patterns, is not a
dotfile, its size is > 0, its size and mtime did not change between two polls, and its mtime is at
least ``stable_seconds`` old. The folder is *polled* (``os.scandir``), not watched with inotify:
polling works the same on local disks, NFS/SMB shares and FUSE mounts, where change notifications
are missing or unreliable, and costs one directory listing per poll.

Per file, in this order (so that a crash at any point loses nothing and duplicates nothing):

1. decode + detect;
2. ``OUT_DIR/<relative path without suffix>.json`` (plus ``.coco.json`` / ``.overlay.png`` when
   asked), each written to a temporary name and renamed into place; when that JSON already
   belongs to another image (``a.png`` beside ``a.tif``) the full name is kept: ``a.tif.json``;
3. one row per instance appended to ``OUT_DIR/points.csv`` (columns of
   :data:`crystal_rt.io.writers.POINT_FIELDS` plus ``index``, the instance's index in the JSON),
   flushed and fsync'd;
4. one line appended to the journal ``OUT_DIR/.crystal-rt-journal.jsonl`` (fsync'd), keyed by
   relative path + size + mtime.

A file whose key is in the journal is never processed again (a *changed* file has a new key and is
processed again). On start, rows of ``points.csv`` for images that are not in the journal (a crash
between steps 3 and 4) are removed before anything else is written, so each processed image has
its rows exactly once.

A file that cannot be decoded (InvalidImage) is moved to ``OUT_DIR/quarantine/<relative path>``
with ``<name>.reason.txt`` beside it naming the error, and journaled as quarantined. The
quarantine lives in OUT_DIR because IN_DIR often belongs to the imager (read-only, or scanned by
other software) and because a quarantine inside IN_DIR would be scanned again. Any other error (a
file that vanished, a full disk, an engine failure) is logged and the file is tried again at a
later poll; the watcher keeps going on every error.

When the model has a class named ``drop``, the JSON also holds ``dispense_target``: the point
inside the best drop mask farthest from the drop's edge and from every crystal
(``cv2.distanceTransform``), in pixels and, given ``um_per_px``, micrometres (``null`` when no drop
was found). Without a ``drop`` class the key is omitted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from ..errors import CrystalRtError, InvalidImage

if TYPE_CHECKING:
    from ..runtime.detector import Detector
    from ..runtime.result import DetectionResult

log = logging.getLogger("crystal_rt.watch")

JOURNAL_NAME = ".crystal-rt-journal.jsonl"
POINTS_NAME = "points.csv"
QUARANTINE_DIR = "quarantine"
DEFAULT_PATTERNS = ("*.png", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.bmp")
WATCH_FORMATS = ("json", "coco", "csv", "overlay")
DROP_CLASS = "drop"


@dataclass(frozen=True)
class WatchOptions:
    in_dir: Path
    out_dir: Path
    recursive: bool = False
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    stable_seconds: float = 10.0
    poll_seconds: float = 1.0
    formats: tuple[str, ...] = ("json", "csv")
    um_per_px: float | None = None


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


@dataclass(frozen=True)
class Outcome:
    path: str  # relative to IN_DIR, with '/'
    status: str  # "ok", "quarantined", "changed" (still being written), "error" (retried later)
    instances: int = 0
    message: str | None = None


@dataclass
class WatchStats:
    ok: int = 0
    quarantined: int = 0
    errors: int = 0
    polls: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.ok + self.quarantined


def journal_key(rel: str, state: FileState) -> str:
    return f"{rel}\0{state.size}\0{state.mtime_ns}"


class Journal:
    """Append-only JSON lines, one per finished file; a torn last line (a crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            with path.open("rb") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                        key = journal_key(
                            entry["path"], FileState(int(entry["size"]), int(entry["mtime_ns"]))
                        )
                    except (ValueError, KeyError, TypeError):
                        continue
                    self.entries[key] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def ok_images(self) -> set[str]:
        return {str(e["path"]) for e in self.entries.values() if e.get("status") == "ok"}

    def append(self, rel: str, state: FileState, status: str, **extra: Any) -> None:
        entry = {
            "path": rel,
            "size": state.size,
            "mtime_ns": state.mtime_ns,
            "status": status,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            fh.write((json.dumps(entry) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[journal_key(rel, state)] = entry


def dispense_target(result: DetectionResult, um_per_px: float | None = None) -> dict[str, float] | None:
    """The point in the best ``drop`` mask farthest from the drop edge and every other instance."""
    import cv2
    import numpy as np

    drops = [inst for inst in result.instances if inst.label_name == DROP_CLASS]
    if not drops:
        return None
    drop = max(drops, key=lambda inst: inst.score).mask
    h, w = drop.crop.shape
    if h == 0 or w == 0:
        return None
    region = np.zeros((h + 2, w + 2), np.uint8)  # a zero border: the crop's edge is the drop's edge
    region[1:-1, 1:-1] = drop.crop
    for inst in result.instances:
        if inst.label_name == DROP_CLASS:
            continue
        m = inst.mask
        ch, cw = m.crop.shape
        x0, y0 = max(m.x0, drop.x0), max(m.y0, drop.y0)
        x1, y1 = min(m.x0 + cw, drop.x0 + w), min(m.y0 + ch, drop.y0 + h)
        if x0 >= x1 or y0 >= y1:
            continue
        crystal = m.crop[y0 - m.y0 : y1 - m.y0, x0 - m.x0 : x1 - m.x0]
        window = region[y0 - drop.y0 + 1 : y1 - drop.y0 + 1, x0 - drop.x0 + 1 : x1 - drop.x0 + 1]
        window[crystal] = 0
    dist = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    _, best, _, (bx, by) = cv2.minMaxLoc(dist)
    if best <= 0:
        return None
    target = {
        "x": float(drop.x0 + bx - 1),
        "y": float(drop.y0 + by - 1),
        "clearance_px": round(float(best), 3),
    }
    if um_per_px is not None:
        target |= {
            "x_um": round(target["x"] * um_per_px, 3),
            "y_um": round(target["y"] * um_per_px, 3),
            "clearance_um": round(float(best) * um_per_px, 3),
        }
    return target


def point_rows(result: DetectionResult, image: str) -> list[list[str]]:
    """``points.csv`` rows: POINT_FIELDS (image, x, y, score, label) then the instance index."""
    from ..io.writers import point_row

    return [[*point_row(image, inst), str(index)] for index, inst in enumerate(result.instances)]


class Watcher:
    """Polls ``options.in_dir``; :meth:`poll` does one pass, :meth:`run` loops until stopped."""

    def __init__(
        self,
        detector: Detector,
        options: WatchOptions,
        *,
        report: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time,
    ) -> None:
        from ..io.writers import POINT_FIELDS

        self.detector = detector
        self.options = options
        self.report = report
        self.clock = clock
        self.in_dir = options.in_dir.resolve()
        self.out_dir = options.out_dir.resolve()
        if not self.in_dir.is_dir():
            raise InvalidImage("input folder not found (or not a folder)", path=options.in_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.out_dir / QUARANTINE_DIR
        self.points_path = self.out_dir / POINTS_NAME
        self.point_fields = (*POINT_FIELDS, "index")
        self.journal = Journal(self.out_dir / JOURNAL_NAME)
        self.with_dispense = DROP_CLASS in detector.model.class_names
        self._seen: dict[str, FileState] = {}
        self._reconcile_points()

    # --- scanning -----------------------------------------------------------------------------
    def _matches(self, name: str) -> bool:
        lower = name.lower()
        return not name.startswith(".") and any(fnmatchcase(lower, p.lower()) for p in self.options.patterns)

    def _walk(self, folder: Path, prefix: str) -> Iterator[tuple[str, FileState]]:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            return
        for entry in sorted(entries, key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    inside_out = Path(entry.path).resolve() == self.out_dir
                    if self.options.recursive and not entry.name.startswith(".") and not inside_out:
                        yield from self._walk(Path(entry.path), rel + "/")
                elif self._matches(entry.name) and entry.is_file():
                    st = entry.stat()
                    yield rel, FileState(st.st_size, st.st_mtime_ns)
            except OSError:  # vanished between listing and stat
                continue

    def scan(self) -> dict[str, FileState]:
        """Candidate files (relative path -> size and mtime), journaled ones left out."""
        return {
            rel: st for rel, st in self._walk(self.in_dir, "") if journal_key(rel, st) not in self.journal
        }

    def poll(self, *, limit: int | None = None, stop: threading.Event | None = None) -> list[Outcome]:
        """One pass: note sizes, process the files that are stable (at most ``limit``; none once
        ``stop`` is set: a stop takes effect after the current file)."""
        now = self.clock()
        current = self.scan()
        outcomes: list[Outcome] = []
        for rel, state in current.items():
            if (limit is not None and len(outcomes) >= limit) or (stop is not None and stop.is_set()):
                break
            stable = (
                state.size > 0
                and self._seen.get(rel) == state
                and now - state.mtime >= self.options.stable_seconds
            )
            if stable:
                outcome = self.process(rel, state)
                outcomes.append(outcome)
                if self.report is not None:
                    self.report(outcome)
        self._seen = current
        return outcomes

    def run(
        self, stop: threading.Event | None = None, *, once: bool = False, max_files: int | None = None
    ) -> WatchStats:
        """Poll until ``stop`` is set (or, with ``once``, two polls apart: what is there and stable)."""
        stop = stop or threading.Event()
        stats = WatchStats()
        while not stop.is_set():
            left = None if max_files is None else max_files - stats.done
            for outcome in self.poll(limit=left, stop=stop):
                stats.outcomes.append(outcome)
                if outcome.status == "ok":
                    stats.ok += 1
                elif outcome.status == "quarantined":
                    stats.quarantined += 1
                elif outcome.status == "error":
                    stats.errors += 1
            stats.polls += 1
            if max_files is not None and stats.done >= max_files:
                break
            if once and stats.polls >= 2:
                break
            stop.wait(self.options.poll_seconds)
        return stats

    # --- one file ---------------------------------------------------------------------------
    def process(self, rel: str, state: FileState) -> Outcome:
        from ..io.decode import read_image

        path = self.in_dir / rel
        try:
            t0 = perf_counter()
            pixels = read_image(path, max_pixels=self.detector.max_pixels, name=rel)
            decode_ms = (perf_counter() - t0) * 1e3
            if self._state(path) != state:
                return Outcome(rel, "changed", message="changed while being read; retried at a later poll")
            result = self.detector.detect_pixels(pixels, name=rel, decode_ms=decode_ms)
        except InvalidImage as exc:
            if self._state(path) != state:  # vanished or rewritten: not the file's fault
                return Outcome(rel, "changed", message=exc.message)
            return self._quarantine(rel, state, exc)
        except CrystalRtError as exc:
            log.error("%s: %s", rel, exc)
            return Outcome(rel, "error", message=str(exc))
        try:
            outputs = self._write_results(rel, state, pixels, result)
            self.journal.append(rel, state, "ok", instances=len(result), outputs=outputs)
        except OSError as exc:
            log.error("%s: cannot write results: %s", rel, exc)
            return Outcome(rel, "error", message=f"cannot write results: {exc}")
        return Outcome(rel, "ok", instances=len(result))

    @staticmethod
    def _state(path: Path) -> FileState | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return FileState(st.st_size, st.st_mtime_ns)

    def _write_results(self, rel: str, state: FileState, pixels: Any, result: DetectionResult) -> list[str]:
        from ..io.writers import atomic_write_bytes, coco_results, write_overlay

        base = self._output_base(rel)
        data = result.to_dict()
        if self.with_dispense:
            data["dispense_target"] = dispense_target(result, self.options.um_per_px)
        data["source"] = {"path": rel, "size": state.size, "mtime_ns": state.mtime_ns}
        json_path = self.out_dir / f"{base}.json"
        written = [f"{base}.json"]
        if "coco" in self.options.formats:
            atomic_write_bytes(
                self.out_dir / f"{base}.coco.json", (json.dumps(coco_results([result])) + "\n").encode()
            )
            written.append(f"{base}.coco.json")
        if "overlay" in self.options.formats:
            write_overlay(pixels, result, self.out_dir / f"{base}.overlay.png")
            written.append(f"{base}.overlay.png")
        atomic_write_bytes(json_path, (json.dumps(data, indent=2) + "\n").encode())
        if "csv" in self.options.formats:
            self._append_points(point_rows(result, rel))
        return written

    def _output_base(self, rel: str) -> PurePosixPath:
        """``<relpath without suffix>``, or ``<relpath>`` when that JSON belongs to another image
        (``a.png`` and ``a.tif`` side by side: the second gives ``a.tif.json``)."""
        base = PurePosixPath(rel).with_suffix("")
        existing = self.out_dir / f"{base}.json"
        if existing.is_file():
            try:
                owner = json.loads(existing.read_bytes()).get("image")
            except (OSError, ValueError, AttributeError):
                owner = None
            if owner != rel:
                return PurePosixPath(rel)
        return base

    def _append_points(self, rows: list[list[str]]) -> None:
        new = not self.points_path.is_file() or self.points_path.stat().st_size == 0
        if not rows and not new:
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if new:
            writer.writerow(self.point_fields)
        writer.writerows(rows)
        with self.points_path.open("ab") as fh:
            fh.write(buf.getvalue().encode())
            fh.flush()
            os.fsync(fh.fileno())

    def _reconcile_points(self) -> None:
        """Drop points.csv rows of images the journal does not hold (a crash before journaling)."""
        from ..io.writers import atomic_write_bytes

        if not self.points_path.is_file():
            return
        done = self.journal.ok_images()
        with self.points_path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        keep = [row for row in body if row and row[0] in done]
        if len(keep) == len(body):
            return
        log.warning("points.csv: removing %d row(s) of images not in the journal", len(body) - len(keep))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *keep])
        atomic_write_bytes(self.points_path, buf.getvalue().encode())

    def _quarantine(self, rel: str, state: FileState, error: CrystalRtError) -> Outcome:
        dest = self.quarantine_dir / rel
        if dest.exists():
            dest = dest.with_name(f"{dest.stem}.{state.mtime_ns}{dest.suffix}")
        reason = f"{type(error).__name__}: {error.message}\nfile: {rel}\n"
        moved = True
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.in_dir / rel, dest)
        except OSError as exc:
            moved = False
            reason += f"(could not be moved here: {exc.strerror or exc})\n"
        try:
            (dest.parent / f"{dest.name}.reason.txt").write_text(reason)
            self.journal.append(rel, state, "quarantined", error=type(error).__name__, message=error.message)
        except OSError as exc:
            log.error("%s: cannot quarantine: %s", rel, exc)
            return Outcome(rel, "error", message=f"cannot quarantine: {exc}")
        log.warning("%s: quarantined (%s)%s", rel, error.message, "" if moved else " in place")
        return Outcome(rel, "quarantined", message=error.message)
