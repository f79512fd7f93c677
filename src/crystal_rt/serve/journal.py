"""The hot-folder watcher's journal: one JSON line per finished file, durable across crashes.

An entry names the image (relative to IN_DIR, with '/'), its size and mtime (a file rewritten in
place is a new entry), its status and time. Appends are fsynced and a failed or partial append is
truncated away; a torn last line (a crash mid-append) is cut off when the journal is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_NAME", "FileState", "Journal", "append_durably", "journal_key"]

JOURNAL_NAME = ".crystal-rt-journal.jsonl"


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


def journal_key(rel: str, state: FileState) -> str:
    return f"{rel}\0{state.size}\0{state.mtime_ns}"


def append_durably(path: Path, data: bytes) -> int:
    """Append ``data`` to ``path`` and fsync; a failed or partial write is truncated away (so a
    retry never follows a torn line); a file it creates has its folder fsynced too (its name is
    durable). Returns the new size."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
    if created:
        from ..io.writers import fsync_folder

        fsync_folder(path.parent)
    return before + len(data)


def _cut_torn_tail(path: Path) -> int:
    """Cut a last line without its newline (a crash mid-append); returns the bytes removed."""
    try:
        with path.open("r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            keep = 0
            block = 1 << 16
            pos = size
            while pos > 0:  # the last newline, read backwards in blocks
                start = max(0, pos - block)
                fh.seek(start)
                found = fh.read(pos - start).rfind(b"\n")
                if found >= 0:
                    keep = start + found + 1
                    break
                pos = start
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
            return size - keep
    except FileNotFoundError:
        return 0


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """A journal entry, or None; a line glued to a torn one (older versions) gives its second part."""
    glued = line.rfind(b'{"path"')
    for start in dict.fromkeys((0, glued)):
        if start < 0:
            continue
        try:
            entry = json.loads(line[start:])
            if isinstance(entry, dict):
                FileState(int(entry["size"]), int(entry["mtime_ns"]))
                if isinstance(entry["path"], str):
                    return entry
        except (ValueError, KeyError, TypeError):
            continue
    return None


class Journal:
    """Append-only JSON lines, one per finished file; a torn last line (a crash) is cut off on load,
    a failed append is undone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        #: each image's latest "ok" entry, oldest first (a re-processed image moves to the end)
        self.latest_ok: dict[str, dict[str, Any]] = {}
        self.repaired = 0
        if path.is_file():
            self.repaired = _cut_torn_tail(path)
            with path.open("rb") as fh:
                for line in fh:
                    entry = _parse_entry(line)
                    if entry is None:
                        continue
                    self._add(entry)

    def _add(self, entry: dict[str, Any]) -> None:
        rel = str(entry["path"])
        self.entries[journal_key(rel, FileState(int(entry["size"]), int(entry["mtime_ns"])))] = entry
        if entry.get("status") == "ok":
            self.latest_ok.pop(rel, None)
            self.latest_ok[rel] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def ok_images(self) -> set[str]:
        return set(self.latest_ok)

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
        append_durably(self.path, (json.dumps(entry) + "\n").encode())
        self._add(entry)
