"""The hot-folder watcher: detect every image that lands in IN_DIR exactly once, results in OUT_DIR.

How a file is picked up (as imager integrations do): it matches one of the patterns, is not a
dotfile, its size is > 0, its size and mtime did not change between two polls, and it has been so
for at least ``stable_seconds``: its mtime is that old, or this watcher has seen it unchanged that
long by its own clock (so a writer whose clock is ahead of ours, a camera's set to 2036, hides
nothing). The last poll of a ``--once`` run takes a file whose mtime is in the future when it is
unchanged between the two looks (there is no later look to wait for). The folder is *polled*
(``os.scandir``), not watched with inotify: polling works the same on local disks, NFS/SMB shares
and FUSE mounts, where change notifications are missing or unreliable, and costs one directory
listing per poll.

Only regular files are read, and no link is followed: a symbolic link, named pipe, socket or device
file matching the patterns is quarantined by record (never opened, never copied), a link to a
folder is not entered, and a file is opened part by part from IN_DIR with ``O_NOFOLLOW`` (a link
swapped in after the scan is not followed) and read once: the decoder and a quarantine copy get
those bytes.

The watcher never moves, changes or deletes anything in IN_DIR (a writer may still hold a file
there). OUT_DIR may not be IN_DIR or inside it (overlays would be fed back as inputs), and one
watcher at a time owns OUT_DIR (:mod:`.outlock`: an flock on the folder itself and on
``OUT_DIR/.crystal-rt-watch.lock``), which the system releases when the process ends, however it
ends, so a stale lock cannot block the next run; a second watcher on the same OUT_DIR (overlapping
cron runs) is refused with :class:`~crystal_rt.errors.OutputBusy`, also when the lock file was
deleted, and a watcher whose OUT_DIR was removed or replaced stops with it. On taking the lock the
watcher removes the temporary files a killed run left in OUT_DIR (``.NAME.XXXXXXXX.tmp``) and
takes back from the journal every image whose results are missing or do not parse (processed
again if still in IN_DIR as it was).

Per file, in this order (so that a crash at any point loses nothing and duplicates nothing):

1. decode + detect;
2. ``OUT_DIR/<relative path>.json`` — the input's full name plus ``.json`` (``a.png`` ->
   ``a.png.json``, ``x.png.jpg`` -> ``x.png.jpg.json``), so names are unique per input and the
   same on every run; a name too long for the file system keeps its first bytes and gets ``~`` and
   a hash of the full name — plus ``.coco.json`` / ``.overlay.png`` when asked, each written to a
   temporary name, fsynced, renamed into place and its folder fsynced (durable before step 3);
3. one line appended to the journal ``OUT_DIR/.crystal-rt-journal.jsonl`` (fsync'd), keyed by
   relative path + size + mtime, holding the image's ``points.csv`` rows: this is the commit;
4. ``OUT_DIR/points.csv`` (columns :data:`crystal_rt.io.writers.POINT_FIELDS`, the same as
   ``crystal-rt detect``'s) brought in line with the journal: new rows appended (fsync'd); when
   the image had rows before (a file rewritten under the same name) the table is rewritten
   atomically with the image's rows replaced, so ``points.csv`` always matches the JSONs.

``points.csv`` is derived from the journal: on start (and after a failed write) it is rebuilt when
it differs — rows of images not journaled, duplicated or torn rows go, missing rows come back.
Every append (journal and CSV) is undone (truncated back) when it fails half-way (a full disk), and
a torn last journal line (a crash mid-write) is cut off on start, so nothing is torn into the next
line; a journal line glued to a torn one by older versions is still read.

A file whose key is in the journal is never processed again (a *changed* file has a new key and is
processed again).

A file that cannot be decoded (InvalidImage, or any other decoder failure, including running out
of memory), is larger than ``max_bytes``, or has stayed empty (0 bytes) for ``empty_grace_seconds``
is *quarantined*: journaled as quarantined, with ``OUT_DIR/quarantine/<relative path>.reason.txt``
naming the error and a copy of the file beside it, never more readable than the file (no copy of
an empty, too-large or unreadable file, a link or a special file). The file
itself stays in IN_DIR: a writer that stalled longer than ``stable_seconds`` and later finishes the
file changes its size and mtime, and the finished file is processed (its quarantine copy removed).
Any other error (a full disk, an engine failure) is reported and the file is tried again later,
with a per-file back-off (``poll_seconds`` doubling up to ``retry_max_seconds``); the watcher
keeps going on every error, whatever it is.

When the model has a class named ``drop``, the JSON also holds ``dispense_target``
(``results/dispense.py``, as CHiMP computes it): in pixels and, given ``um_per_px``, micrometres
from the image centre (``null`` when no drop was found). Without a ``drop`` class the key is omitted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from ..errors import CrystalRtError, ImageTooLarge, InvalidImage, InvalidOption
from .journal import JOURNAL_NAME, FileState, Journal, append_durably, journal_key
from .outlock import OutputLock

if TYPE_CHECKING:
    from ..results.detection import DetectionResult
    from ..runtime.detector import Detector

log = logging.getLogger("crystal_rt.watch")

POINTS_NAME = "points.csv"
QUARANTINE_DIR = "quarantine"
DEFAULT_PATTERNS = ("*.png", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.bmp")
WATCH_FORMATS = ("json", "coco", "csv", "overlay")
DEFAULT_MAX_BYTES = 512 * 2**20
#: room kept in a file name for what the watcher adds to it (".overlay.png", ".<mtime>", ".reason.txt")
_NAME_RESERVE = 40


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
    max_bytes: int = DEFAULT_MAX_BYTES
    empty_grace_seconds: float = 60.0
    retry_max_seconds: float = 300.0


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
    points_pending: bool = False  # points.csv could not be brought in line with the journal
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.ok + self.quarantined

    @property
    def failed(self) -> bool:
        """Anything a cron job should hear about: errors, quarantined files, a stale points.csv."""
        return bool(self.errors or self.quarantined or self.points_pending)


@dataclass
class _Failure:
    state: FileState
    count: int
    next_try: float


def display_name(rel: str) -> str:
    """``rel`` printable and encodable anywhere, on one line: bytes that are not UTF-8 become
    ``\\xNN``, a newline ``\\n``, an escape code ``\\x1b`` (a name cannot forge a log line)."""
    from ..console import printable

    return printable(rel)


def fit_name(name: str, limit: int = 255) -> str:
    """``name`` if it leaves room for the watcher's suffixes within ``limit`` bytes, else its first
    bytes, ``~`` and 12 hex digits of its hash (stable across runs, unique per name)."""
    raw = os.fsencode(name)
    if len(raw) + _NAME_RESERVE <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    head = raw[: max(1, limit - _NAME_RESERVE - len(digest) - 1)].decode("utf-8", "ignore")
    return f"{head}~{digest}"


class _Changed(Exception):
    """The file is no longer what the scan saw (rewritten, or replaced by a link or special file)."""


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: what opening with O_NOFOLLOW gives where a link is met (EMLINK: FreeBSD; ENOTDIR: a folder link)
_LINK_ERRORS = (errno.ELOOP, errno.EMLINK, errno.ENOTDIR)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _open_below(root: Path, rel: str) -> int:
    """A read-only descriptor of ``root/rel`` opened without following a symbolic link in any part
    of ``rel`` (each folder opened relative to the last with ``O_NOFOLLOW``), and without blocking
    on a FIFO; OSError (ELOOP, ENOTDIR) where a link is met."""
    parts = rel.split("/")
    flags = os.O_RDONLY | _CLOEXEC | getattr(os, "O_BINARY", 0)
    if not (_NOFOLLOW and os.open in os.supports_dir_fd):  # Windows: check, then open
        path = root.joinpath(*parts)
        for part in [path, *path.parents]:
            if part == root:
                break
            if part.is_symlink():
                raise OSError(errno.ELOOP, "a symbolic link is on the way", str(part))
        return os.open(path, flags)
    folder_flags = flags | _NOFOLLOW | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(root, os.O_RDONLY | _CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        for name in parts[:-1]:
            inner = os.open(name, folder_flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], flags | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
    finally:
        os.close(fd)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def output_intact(path: Path) -> bool:
    """Whether a result file the journal lists is there whole: a regular, non-empty file; a
    ``.json`` that parses; a ``.png`` with PNG's first and last bytes (a power loss before the data
    reached the disk leaves an empty, zero-filled or missing file)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
        if path.name.endswith(".json"):
            json.loads(path.read_bytes())
        elif path.name.endswith(".png"):
            with path.open("rb") as fh:
                head = fh.read(len(_PNG_SIGNATURE))
                fh.seek(max(0, st.st_size - len(_PNG_END)))
                return head == _PNG_SIGNATURE and fh.read() == _PNG_END
    except (OSError, ValueError):
        return False
    return True


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


class Watcher:
    """Polls ``options.in_dir``; :meth:`poll` does one pass, :meth:`run` loops until stopped.

    The watcher takes OUT_DIR's lock when it is made and holds it until :meth:`run` returns,
    :meth:`release` or :meth:`close` (or the end of a ``with`` block, or of the process); a later
    :meth:`poll` or :meth:`run` takes it again and re-reads the journal first."""

    def __init__(
        self,
        detector: Detector,
        options: WatchOptions,
        *,
        report: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time,
    ) -> None:
        self.detector = detector
        self.options = options
        self.report = report
        self.clock = clock
        self.in_dir = options.in_dir.resolve()
        self.out_dir = options.out_dir.resolve()
        if not self.in_dir.is_dir():
            raise InvalidImage("input folder not found (or not a folder)", path=options.in_dir)
        if self.out_dir == self.in_dir or self.in_dir in self.out_dir.parents:
            where = "the input folder" if self.out_dir == self.in_dir else "inside the input folder"
            raise InvalidOption(
                f"the output folder is {where} {options.in_dir}, where its results would be read as new "
                "images: choose a folder outside it",
                path=options.out_dir,
            )
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidOption("the output folder is a file, not a folder", path=options.out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidOption(
                f"cannot create the output folder: {exc.strerror or exc}", path=options.out_dir
            ) from exc
        self.quarantine_dir = self.out_dir / QUARANTINE_DIR
        self.points_path = self.out_dir / POINTS_NAME
        self.name_max = _name_max(self.out_dir)
        self._seen: dict[str, FileState] = {}
        self._since: dict[str, tuple[FileState, float]] = {}  # state and when it was first seen so
        self._not_regular: dict[str, str] = {}  # links and special files of the last scan: what they are
        self._final_look = False  # the last poll of a --once run: no later look will come
        self._failures: dict[str, _Failure] = {}
        self._closed = False
        self._lock: OutputLock | None = None
        self._hold()

    def _hold(self) -> None:
        """Take OUT_DIR's lock if this watcher does not hold it, and (re)read the journal: another
        watcher may have worked in OUT_DIR while this one did not hold it."""
        if self._lock is not None:
            return
        if self._closed:
            raise InvalidOption("this watcher was closed; make a new Watcher")
        self._lock = OutputLock(self.out_dir)
        try:
            self.journal = Journal(self.out_dir / JOURNAL_NAME)
            if self.journal.repaired:
                log.warning("%s: cut a torn last line (%d bytes)", JOURNAL_NAME, self.journal.repaired)
            self._clean_temporary_files()
            self._check_outputs()
            self._points: dict[str, list[list[str]]] = self._points_from_journal()
            self._points_size = -1  # points.csv's size after our last write (-1: unknown)
            self._points_dirty = "csv" in self.options.formats
            if self._points_dirty:
                self._sync_points(startup=True)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let go of OUT_DIR's lock (:meth:`run` does when it returns); the next poll takes it again."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def close(self) -> None:
        """Release OUT_DIR's lock for good: a closed watcher does not poll again."""
        self._closed = True
        self.release()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _say(self, level: int, message: str, *args: object) -> None:
        """Log, unless a ``report`` callback tells the user already (messages once, not twice)."""
        if self.report is None:
            log.log(level, message, *args)

    # --- start-up -----------------------------------------------------------------------------
    def _clean_temporary_files(self) -> None:
        """Remove the temporary files (``.NAME.XXXXXXXX.tmp``) a killed run left in OUT_DIR: this
        watcher holds OUT_DIR's lock, so no other writer of ours is using them."""
        from ..io.writers import TEMP_NAME

        removed = 0
        for folder, _dirs, files in os.walk(self.out_dir):
            for name in files:
                if not TEMP_NAME.fullmatch(name):
                    continue
                path = Path(folder, name)
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(path.lstat().st_mode):
                        path.unlink()
                        removed += 1
        if removed:
            log.warning("removed %d temporary file(s) left by an interrupted run", removed)

    def _check_outputs(self) -> None:
        """Take back from the journal every image whose results are missing or do not parse (a
        power loss under an older version, which did not fsync them, or a file removed by hand):
        the image is processed again when it is still in IN_DIR as it was."""
        for rel, entry in self.journal.latest_ok.items():
            outputs = entry.get("outputs")
            if not isinstance(outputs, list):
                continue
            key = journal_key(rel, FileState(int(entry["size"]), int(entry["mtime_ns"])))
            if self.journal.entries.get(key) is not entry:  # tried again since, and quarantined
                continue
            broken = [str(name) for name in outputs if not output_intact(self.out_dir / str(name))]
            if broken:
                del self.journal.entries[key]
                log.warning(
                    "%s: %s missing or unreadable; the image is processed again if it is still in the "
                    "input folder",
                    display_name(rel),
                    ", ".join(display_name(name) for name in broken),
                )

    # --- scanning -----------------------------------------------------------------------------
    def _matches(self, name: str) -> bool:
        lower = name.lower()
        return not name.startswith(".") and any(fnmatchcase(lower, p.lower()) for p in self.options.patterns)

    def _walk(self, folder: Path, prefix: str) -> Iterator[tuple[str, FileState]]:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", display_name(str(folder)), exc.strerror or exc)
            return
        for entry in sorted(entries, key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    inside_out = Path(entry.path).resolve() == self.out_dir
                    if self.options.recursive and not entry.name.startswith(".") and not inside_out:
                        yield from self._walk(Path(entry.path), rel + "/")
                elif self._matches(entry.name):
                    st = entry.stat(follow_symlinks=False)  # a link is not followed out of IN_DIR
                    if not stat.S_ISREG(st.st_mode):
                        self._not_regular[rel] = _kind(st.st_mode)
                    yield rel, FileState(st.st_size, st.st_mtime_ns)
            except OSError:  # vanished between listing and stat
                continue

    def scan(self) -> dict[str, FileState]:
        """Candidate files (relative path -> size and mtime), journaled ones left out."""
        self._hold()
        self._not_regular = {}
        return {
            rel: st for rel, st in self._walk(self.in_dir, "") if journal_key(rel, st) not in self.journal
        }

    def poll(self, *, limit: int | None = None, stop: threading.Event | None = None) -> list[Outcome]:
        """One pass: note sizes, process the files that are stable (at most ``limit``; none once
        ``stop`` is set: a stop takes effect after the current file). A file that failed waits for
        its back-off unless it changed."""
        self._hold()
        assert self._lock is not None
        self._lock.check()  # OUT_DIR removed or replaced under us: stop (OutputBusy)
        if self._points_dirty:
            self._sync_points()
        now = self.clock()
        current = self.scan()
        for rel in [r for r in self._failures if r not in current]:
            del self._failures[rel]
        self._since = {
            rel: since if (since := self._since.get(rel)) is not None and since[0] == state else (state, now)
            for rel, state in current.items()
        }
        outcomes: list[Outcome] = []
        for rel, state in current.items():
            if (limit is not None and len(outcomes) >= limit) or (stop is not None and stop.is_set()):
                break
            if self._seen.get(rel) != state:
                continue
            failure = self._failures.get(rel)
            if failure is not None:
                if failure.state != state:
                    del self._failures[rel]
                elif now < failure.next_try:
                    continue
            kind = self._not_regular.get(rel)
            future = state.mtime > now
            if kind is not None:
                outcome = self._quarantine(
                    rel,
                    state,
                    InvalidImage(
                        f"{kind}, not a regular file: not read (links and special files in the input "
                        "folder are not followed)"
                    ),
                )
            elif state.size == 0:
                if self._age(rel, state, now) < self.options.empty_grace_seconds:
                    continue
                outcome = self._quarantine(
                    rel,
                    state,
                    InvalidImage(
                        f"empty file (0 bytes) for more than {self.options.empty_grace_seconds:g} s"
                    ),
                )
            elif self._age(rel, state, now) >= self.options.stable_seconds or (future and self._final_look):
                outcome = self.process(rel, state)
                if future and outcome.status == "ok":
                    note = (
                        f"its modification time is {state.mtime - now:.0f} s ahead of this computer's "
                        "clock (the writer's clock?): judged stable by its size and time stamp alone"
                    )
                    message = f"{outcome.message}; {note}" if outcome.message else note
                    outcome = dataclasses.replace(outcome, message=message)
            else:
                continue
            if outcome.status == "error":
                count = failure.count + 1 if failure is not None and failure.state == state else 1
                delay = min(
                    self.options.retry_max_seconds, max(self.options.poll_seconds, 1.0) * 2 ** (count - 1)
                )
                self._failures[rel] = _Failure(state, count, now + delay)
            else:
                self._failures.pop(rel, None)
            outcomes.append(outcome)
            if self.report is not None:
                self.report(outcome)
        self._seen = current
        return outcomes

    def _age(self, rel: str, state: FileState, now: float) -> float:
        """How long ``rel`` has been as it is: its mtime's age, or, when longer (or the mtime is in
        the future: a writer's clock ahead of ours), how long this watcher has seen it unchanged."""
        since = self._since.get(rel)
        seen_for = now - since[1] if since is not None and since[0] == state else 0.0
        return max(now - state.mtime, seen_for)

    def run(
        self, stop: threading.Event | None = None, *, once: bool = False, max_files: int | None = None
    ) -> WatchStats:
        """Poll until ``stop`` is set (or, with ``once``, two polls apart: what is there and stable);
        OUT_DIR's lock is released on return."""
        try:
            return self._run(stop, once=once, max_files=max_files)
        finally:
            self._final_look = False
            self.release()

    def _run(self, stop: threading.Event | None, *, once: bool, max_files: int | None) -> WatchStats:
        self._hold()
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
            self._final_look = once  # the second look of --once: files with future mtimes are taken
            stop.wait(self.options.poll_seconds)
        if self._points_dirty:
            self._sync_points()
        stats.points_pending = self._points_dirty
        return stats

    # --- one file ---------------------------------------------------------------------------
    def process(self, rel: str, state: FileState) -> Outcome:
        """Decode, detect, write and journal one file; never raises for anything about the file."""
        self._hold()
        shown = display_name(rel)
        decoded = self._read(rel, state)
        if isinstance(decoded, Outcome):
            return decoded
        image, decode_ms = decoded
        try:
            result = self.detector.detect_pixels(image, name=rel, decode_ms=decode_ms)
        except CrystalRtError as exc:
            self._say(logging.ERROR, "%s: %s", shown, exc)
            return Outcome(rel, "error", message=str(exc))
        except Exception as exc:  # MemoryError, an engine fault: retried later, the watcher goes on
            self._say(logging.ERROR, "%s: detection failed: %s: %s", shown, type(exc).__name__, exc)
            return Outcome(rel, "error", message=f"detection failed: {type(exc).__name__}: {exc}")
        try:
            from ..io.writers import point_rows

            rows = point_rows(result, rel)
            outputs = self._write_results(rel, state, image.pixels, result)
            self.journal.append(rel, state, "ok", instances=len(result), outputs=outputs, rows=rows)
        except Exception as exc:
            message = f"cannot write results: {exc.strerror if isinstance(exc, OSError) else exc}"
            self._say(logging.ERROR, "%s: %s", shown, message)
            return Outcome(rel, "error", message=message)
        note = self._update_points(rel, rows)
        self._forget_quarantine(rel)
        return Outcome(rel, "ok", instances=len(result), message=note)

    def _read(self, rel: str, state: FileState) -> tuple[Any, float] | Outcome:
        """The decoded image (pixels and the file's bit depth) and the decode time, or the file's
        outcome (quarantined, changed). The file is opened without following links (none in its
        path either) and read once; a quarantine copy is made of the bytes read."""
        from ..io.decode import read_image_info

        path = self.in_dir / rel
        t0 = perf_counter()
        read = self._read_bytes(rel, state)
        if isinstance(read, Outcome):
            return read
        data, mode = read
        try:
            image = read_image_info(data, max_pixels=self.detector.max_pixels, name=display_name(rel))
            decode_ms = (perf_counter() - t0) * 1e3
        except MemoryError:
            error: CrystalRtError = ImageTooLarge("not enough memory to decode this image")
            return self._quarantine(rel, state, error)
        except Exception as exc:  # InvalidImage, or a decoder fault: the file's problem, not ours
            if self._state(path) != state:  # vanished or rewritten: not the file's fault
                return Outcome(rel, "changed", message=str(exc))
            if not isinstance(exc, InvalidImage):
                exc = InvalidImage(f"cannot be decoded: {type(exc).__name__}: {exc}")
            return self._quarantine(rel, state, exc, copy=(data, mode))
        if self._state(path) != state:
            return Outcome(rel, "changed", message="changed while being read; retried at a later poll")
        return image, decode_ms

    def _read_bytes(self, rel: str, state: FileState) -> tuple[bytes, int] | Outcome:
        """``rel``'s bytes and permission bits, read through a descriptor opened without following
        a link in any part of the path (``O_NOFOLLOW`` part by part), or the file's outcome:
        "changed" when it is no longer the regular file of ``state`` (rewritten, or a link or a FIFO
        swapped in since the scan), quarantined when it cannot be read or is too large."""
        if state.size > self.options.max_bytes:
            too_large = ImageTooLarge(
                f"file too large: {state.size} bytes, more than the limit of {self.options.max_bytes}"
                " (--max-file-mb); not read"
            )
            return self._quarantine(rel, state, too_large)
        try:
            return self._read_fd(rel, state)
        except _Changed as exc:
            return Outcome(rel, "changed", message=str(exc))
        except OSError as exc:
            if self._state(self.in_dir / rel) != state:  # vanished or rewritten: not the file's fault
                return Outcome(rel, "changed", message=f"cannot read: {exc.strerror or exc}")
            problem = "permission denied" if isinstance(exc, PermissionError) else "cannot read file"
            return self._quarantine(rel, state, InvalidImage(f"{problem}: {exc.strerror or exc}"))
        except MemoryError:
            return self._quarantine(rel, state, ImageTooLarge("not enough memory to read this file"))

    def _read_fd(self, rel: str, state: FileState) -> tuple[bytes, int]:
        try:
            fd = _open_below(self.in_dir, rel)
        except OSError as exc:
            if exc.errno in _LINK_ERRORS:  # a link swapped in on the path since the scan
                raise _Changed("a link is on its path now; not followed") from exc
            raise
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Changed(f"now {_kind(st.st_mode)}; looked at again at a later poll")
            if FileState(st.st_size, st.st_mtime_ns) != state:
                raise _Changed("changed since the last poll; retried at a later poll")
            data = fh.read(self.options.max_bytes + 1)
        return data, stat.S_IMODE(st.st_mode)

    @staticmethod
    def _state(path: Path) -> FileState | None:
        try:
            st = path.lstat()
        except OSError:
            return None
        return FileState(st.st_size, st.st_mtime_ns)

    def output_base(self, rel: str) -> PurePosixPath:
        """``<relative path>`` (the full name, suffix kept), the last part cut to fit (see the module)."""
        path = PurePosixPath(rel)
        return path.with_name(fit_name(path.name, self.name_max))

    def _write_results(self, rel: str, state: FileState, pixels: Any, result: DetectionResult) -> list[str]:
        from ..io.writers import atomic_write_bytes, coco_results, write_overlay

        base = self.output_base(rel)
        um = self.options.um_per_px
        target = result.dispense_target
        if um is not None and target is not None and target.um_per_px != um:
            result = dataclasses.replace(result, dispense_target=dataclasses.replace(target, um_per_px=um))
        data = result.to_dict()
        data["source"] = {"path": rel, "size": state.size, "mtime_ns": state.mtime_ns}
        written = [f"{base}.json"]
        if "coco" in self.options.formats:
            atomic_write_bytes(
                self.out_dir / f"{base}.coco.json", (json.dumps(coco_results([result])) + "\n").encode()
            )
            written.append(f"{base}.coco.json")
        if "overlay" in self.options.formats:
            write_overlay(pixels, result, self.out_dir / f"{base}.overlay.png")
            written.append(f"{base}.overlay.png")
        atomic_write_bytes(self.out_dir / f"{base}.json", (json.dumps(data, indent=2) + "\n").encode())
        return written

    # --- points.csv ---------------------------------------------------------------------------
    def _points_from_journal(self) -> dict[str, list[list[str]]]:
        """Each journaled image's rows, in journal order; entries of older versions, which did not
        journal rows, take the image's last run of rows from the existing points.csv."""

        from ..io.writers import csv_text

        table: dict[str, list[list[str]]] = {}
        legacy: dict[str, list[list[str]]] | None = None
        for rel, entry in self.journal.latest_ok.items():
            rows = entry.get("rows")
            if isinstance(rows, list) and all(isinstance(r, list) for r in rows):
                table[rel] = [[str(c) for c in row] for row in rows]
                continue
            if legacy is None:
                legacy = {}
                try:
                    with self.points_path.open(newline="", encoding="utf-8", errors="replace") as fh:
                        body = list(csv.reader(fh))[1:]
                except OSError:
                    body = []
                prev_name, prev_index = None, -1
                for row in body:  # an image's last run of rows (a run restarts at a lower index)
                    try:
                        name, index = row[0], int(row[5])
                    except (IndexError, ValueError):
                        prev_name = None
                        continue
                    if len(row) != 6:
                        prev_name = None
                        continue
                    if name != prev_name or index <= prev_index:
                        legacy[name] = []
                    legacy[name].append(row)
                    prev_name, prev_index = name, index
            found = legacy.get(rel, legacy.get(csv_text(rel), []))
            table[rel] = [[csv_text(rel), *row[1:]] for row in found]
        return table

    def _sync_points(self, *, startup: bool = False) -> None:
        """Rewrite points.csv (atomically) where it differs from the journal's rows."""
        from ..io.writers import atomic_write_bytes, points_csv_bytes

        expected = points_csv_bytes(row for rows in self._points.values() for row in rows)
        try:
            current = self.points_path.read_bytes() if self.points_path.is_file() else None
            if current != expected and (current is not None or self._points):
                if current is not None:
                    self._say(logging.WARNING, "%s: brought in line with the journal", POINTS_NAME)
                atomic_write_bytes(self.points_path, expected)
            self._points_size = len(expected) if current is not None or self._points else -1
            self._points_dirty = False
        except OSError as exc:
            self._points_dirty = True
            if not startup:
                self._say(logging.ERROR, "%s: cannot write (%s); retried at the next poll", POINTS_NAME, exc)

    def _update_points(self, rel: str, rows: list[list[str]]) -> str | None:
        """Bring points.csv in line after ``rel`` was journaled: append, or rewrite when the image
        had rows before or the file changed under us. Returns a note when it has to wait."""
        from ..io.writers import points_csv_bytes

        if "csv" not in self.options.formats:
            self._points.pop(rel, None)
            self._points[rel] = rows
            return None
        old = self._points.pop(rel, None)
        self._points[rel] = rows
        if not self._points_dirty and not old:
            try:
                size = self.points_path.stat().st_size if self.points_path.is_file() else -1
                if size == self._points_size:
                    if rows or size < 0:
                        data = points_csv_bytes(rows)
                        if size >= 0:
                            data = data[data.index(b"\n") + 1 :]  # no second header
                        self._points_size = append_durably(self.points_path, data)
                    return None
            except OSError:
                pass
        self._sync_points()
        return f"{POINTS_NAME} will be updated at a later poll" if self._points_dirty else None

    # --- quarantine ---------------------------------------------------------------------------
    def _quarantine_path(self, rel: str) -> Path:
        path = PurePosixPath(rel)
        return self.quarantine_dir / path.parent / fit_name(path.name, self.name_max)

    def _quarantine(
        self, rel: str, state: FileState, error: CrystalRtError, *, copy: tuple[bytes, int] | None = None
    ) -> Outcome:
        """Record ``rel`` as quarantined (reason file, journal) and, given ``copy`` (the bytes read
        and the file's permission bits), keep a copy of them, never more readable than the file
        was; the file itself is left where it is."""
        from ..io.writers import atomic_write_bytes

        dest = self._quarantine_path(rel)
        if dest.exists() or (dest.parent / f"{dest.name}.reason.txt").exists():
            dest = dest.with_name(f"{dest.stem}.{state.mtime_ns}{dest.suffix}")
        shown = display_name(rel)
        reason = f"{type(error).__name__}: {error.message}\nfile: {shown}\nsize: {state.size} bytes\n"
        if copy is not None:
            data, mode = copy
            try:
                atomic_write_bytes(dest, data, mode=mode & 0o666)
                reason += "a copy is kept here; the file itself was left in the input folder\n"
            except OSError as exc:
                reason += f"(no copy could be kept here: {exc.strerror or exc})\n"
        try:
            atomic_write_bytes(
                dest.parent / f"{dest.name}.reason.txt", reason.encode("utf-8", "backslashreplace")
            )
            self.journal.append(rel, state, "quarantined", error=type(error).__name__, message=error.message)
        except OSError as exc:
            self._say(logging.ERROR, "%s: cannot quarantine: %s", shown, exc)
            return Outcome(rel, "error", message=f"cannot quarantine: {exc.strerror or exc}")
        self._say(logging.WARNING, "%s: quarantined (%s)", shown, error.message)
        return Outcome(rel, "quarantined", message=error.message)

    def _forget_quarantine(self, rel: str) -> None:
        """A file that was quarantined and is now processed (a writer finished it): drop its copy."""
        dest = self._quarantine_path(rel)
        for stale in (dest, dest.parent / f"{dest.name}.reason.txt"):
            with contextlib.suppress(OSError):
                stale.unlink(missing_ok=True)
