"""The hot folder at the edges (issue 29, items 2, 3, 5, 6, 11): power loss, links and special
files in IN_DIR, clocks ahead of ours, a deleted lock file, temporary files left by kill -9.

Each test drives a Watcher on the tiny engine (the last one the ``crystal-rt watch`` command).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import CLI_SCRIPT

from crystal_rt.errors import OutputBusy
from crystal_rt.serve.journal import JOURNAL_NAME, FileState
from crystal_rt.serve.outlock import LOCK_NAME
from crystal_rt.serve.watch import Watcher, WatchOptions

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links, FIFOs, modes and locks")


def _options(in_dir: Path, out_dir: Path, **kw: Any) -> WatchOptions:
    kw.setdefault("stable_seconds", 0.0)
    return WatchOptions(in_dir=in_dir, out_dir=out_dir, poll_seconds=0.01, **kw)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "points.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _result(path: Path) -> tuple[Any, Any]:
    data = json.loads(path.read_bytes())
    return data["instances"], data["source"]


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    return in_dir, out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- 2. power loss --------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
def test_result_files_are_durable_before_the_journal_commits(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes], monkeypatch: Any
) -> None:
    """Each result file is fsynced, renamed into place and its folder fsynced, all before the
    journal line that records it is fsynced (the OS calls recorded in order)."""
    in_dir, out = _folders(tmp_path)
    (in_dir / "sub").mkdir()
    (in_dir / "sub" / "a.png").write_bytes(drop_pngs[0])
    watcher = Watcher(detector, _options(in_dir, out, recursive=True, formats=("json", "csv", "overlay")))
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(self: Path, target: Any) -> Path:
        calls.append(("replace", os.fspath(target)))
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    assert [o.status for o in watcher.run(once=True).outcomes] == ["ok"]
    monkeypatch.undo()
    journal = next(i for i, c in enumerate(calls) if c == ("fsync", str(out / JOURNAL_NAME)))
    for name in ("sub/a.png.json", "sub/a.png.overlay.png"):
        final = str(out / name)
        renamed = calls.index(("replace", final))
        assert renamed < journal, name
        tmp_synced = [i for i, (op, path) in enumerate(calls[:renamed]) if op == "fsync" and ".tmp" in path]
        assert tmp_synced and Path(calls[tmp_synced[-1]][1]).parent == out / "sub", name  # data first
        folder_synced = calls.index(("fsync", str(out / "sub")), renamed)
        assert folder_synced < journal, name  # then the name, then the commit


def test_done_image_with_missing_or_torn_results_is_processed_again(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes], caplog: Any
) -> None:
    """After a power loss under a version that did not fsync, the journal says done while a JSON
    is cut short or missing, or an overlay zero-filled: a restart processes those again."""
    in_dir, out = _folders(tmp_path)
    for i in range(3):
        (in_dir / f"d{i}.png").write_bytes(drop_pngs[i])
    (in_dir / "gone.png").write_bytes(drop_pngs[3])
    opts = _options(in_dir, out, formats=("json", "csv", "overlay"))
    assert Watcher(detector, opts).run(once=True).ok == 4
    good = {n: _result(out / f"d{n}.png.json") for n in range(3)}
    good_rows = _rows(out)
    raw = (out / "d0.png.json").read_bytes()
    (out / "d0.png.json").write_bytes(raw[: len(raw) // 2])  # cut short
    (out / "d1.png.json").unlink()  # missing
    size = (out / "d2.png.overlay.png").stat().st_size
    (out / "d2.png.overlay.png").write_bytes(b"\0" * size)  # the size reached the disk, not the data
    (out / "gone.png.json").write_bytes(b"")  # empty, and nothing left to redo it from
    (in_dir / "gone.png").unlink()
    caplog.set_level("WARNING", logger="crystal_rt.watch")
    stats = Watcher(detector, opts).run(once=True)
    assert sorted(o.path for o in stats.outcomes if o.status == "ok") == ["d0.png", "d1.png", "d2.png"]
    assert "gone.png: gone.png.json missing or unreadable" in caplog.text
    for n in range(3):
        assert _result(out / f"d{n}.png.json") == good[n]
    assert (out / "d2.png.overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(map(str, _rows(out))) == sorted(map(str, good_rows))  # every row once, gone.png's kept
    assert Watcher(detector, opts).run(once=True).done == 0  # and nothing more on the next start


# --- 3. links and special files -------------------------------------------------------------
@posix_only
def test_links_and_special_files_are_refused_by_name_and_never_copied(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = _folders(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the secret")
    secret.chmod(0o600)
    picture = tmp_path / "elsewhere.png"  # a real image outside IN_DIR: not read either
    picture.write_bytes(drop_pngs[0])
    (in_dir / "sub").mkdir()
    (in_dir / "sub" / "innocent.png").symlink_to(secret)
    (in_dir / "sub" / "picture.png").symlink_to(picture)
    (in_dir / "linked").symlink_to(tmp_path, target_is_directory=True)  # a folder link: not entered
    os.mkfifo(in_dir / "pipe.png")
    (in_dir / "ok.png").write_bytes(drop_pngs[1])
    (in_dir / "private.png").write_bytes(b"not an image, readable by its owner only")
    (in_dir / "private.png").chmod(0o600)
    opts = _options(in_dir, out, recursive=True)
    stats = Watcher(detector, opts).run(once=True)
    got = {o.path: (o.status, o.message or "") for o in stats.outcomes}
    assert got.keys() == {"ok.png", "pipe.png", "private.png", "sub/innocent.png", "sub/picture.png"}
    assert got["ok.png"][0] == "ok"
    assert got["sub/innocent.png"][0] == got["sub/picture.png"][0] == "quarantined"
    assert got["sub/innocent.png"][1].startswith("a symbolic link, not a regular file: not read")
    assert got["pipe.png"] == ("quarantined", got["pipe.png"][1])
    assert got["pipe.png"][1].startswith("a named pipe (FIFO), not a regular file")
    assert stats.failed  # cron hears about them
    for path in out.rglob("*"):
        if path.is_file():
            assert b"the secret" not in path.read_bytes(), path
    assert not (out / "quarantine" / "sub" / "innocent.png").exists()
    assert not (out / "quarantine" / "sub" / "picture.png").exists()
    assert not (out / "sub" / "picture.png.json").exists()
    reason = (out / "quarantine" / "sub" / "innocent.png.reason.txt").read_text()
    assert "a symbolic link" in reason and str(secret) not in reason
    copy = out / "quarantine" / "private.png"  # a copy never more readable than its source
    assert copy.read_bytes() == b"not an image, readable by its owner only"
    assert stat.S_IMODE(copy.stat().st_mode) & 0o077 == 0
    assert Watcher(detector, opts).run(once=True).done == 0  # reported once


@posix_only
def test_a_link_swapped_in_after_the_scan_is_not_followed(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    """A file (or a folder on its path) replaced by a link between the scan and the read: the
    watcher opens part by part without following links, and reads nothing."""
    in_dir, out = _folders(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(drop_pngs[0])
    (in_dir / "plate").symlink_to(outside, target_is_directory=True)
    (in_dir / "y.png").symlink_to(outside / "x.png")
    st = (outside / "x.png").stat()
    state = FileState(st.st_size, st.st_mtime_ns)  # what a scan of the real files would have seen
    with Watcher(detector, _options(in_dir, out, recursive=True)) as watcher:
        for rel in ("plate/x.png", "y.png"):
            outcome = watcher.process(rel, state)
            assert outcome.status == "changed", outcome
    assert not list(out.rglob("*.json"))


# --- 5. clocks ------------------------------------------------------------------------------
def test_future_mtimes_are_processed_in_a_once_run(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    """An hour ahead (another computer's clock) or in 2036 (a camera's): with the default
    --stable-seconds 10, --once takes them when unchanged between its two looks, and says why."""
    in_dir, out = _folders(tmp_path)
    (in_dir / "hour.png").write_bytes(drop_pngs[0])
    (in_dir / "y2036.png").write_bytes(drop_pngs[1])
    (in_dir / "now.png").write_bytes(drop_pngs[2])  # young by our clock: left for the next run
    hour = time.time() + 3600
    os.utime(in_dir / "hour.png", (hour, hour))
    os.utime(in_dir / "y2036.png", (2082758400, 2082758400))  # 2036-01-01
    stats = Watcher(detector, _options(in_dir, out, stable_seconds=10.0)).run(once=True)
    got = {o.path: o for o in stats.outcomes}
    assert got.keys() == {"hour.png", "y2036.png"} and stats.ok == 2
    assert "ahead of this computer's clock" in (got["hour.png"].message or "")
    assert json.loads((out / "y2036.png.json").read_text())["source"]["mtime_ns"] == 2082758400 * 10**9


def test_future_mtime_waits_for_stable_seconds_of_our_clock_when_watching(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = _folders(tmp_path)
    clock = Clock(time.time())
    path = in_dir / "ahead.png"
    data = drop_pngs[0]
    path.write_bytes(data[:100])
    ahead = clock.now + 3600
    os.utime(path, (ahead, ahead))
    watcher = Watcher(detector, _options(in_dir, out, stable_seconds=10.0), clock=clock)
    assert watcher.poll() == []
    clock.now += 6
    path.write_bytes(data)  # still being written (by a computer an hour ahead)
    os.utime(path, (ahead + 6, ahead + 6))
    assert watcher.poll() == []  # changed
    clock.now += 6
    assert watcher.poll() == []  # unchanged for 6 s of our clock: not yet
    clock.now += 6
    outcomes = watcher.poll()  # unchanged for 12 s
    assert [(o.path, o.status) for o in outcomes] == [("ahead.png", "ok")]
    empty = in_dir / "empty.png"  # an empty file from the future is quarantined after the grace too
    empty.write_bytes(b"")
    os.utime(empty, (ahead, ahead))
    assert watcher.poll() == []
    clock.now += 61
    assert [(o.path, o.status) for o in watcher.poll()] == [("empty.png", "quarantined")]
    watcher.close()


# --- 6. the lock ----------------------------------------------------------------------------
@posix_only
def test_deleting_the_lock_file_does_not_let_a_second_watcher_in(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = _folders(tmp_path)
    (in_dir / "d.png").write_bytes(drop_pngs[0])
    first = Watcher(detector, _options(in_dir, out))
    (out / LOCK_NAME).unlink()  # a cleanup job under a running watcher
    with pytest.raises(OutputBusy, match="two would process every image twice"):
        Watcher(detector, _options(in_dir, out))
    assert [o.status for o in first.poll() + first.poll()] == ["ok"]
    first.close()
    with Watcher(detector, _options(in_dir, out)) as second:  # free again once the first lets go
        assert second.run(once=True).done == 0


@posix_only
def test_a_watcher_whose_output_folder_is_replaced_stops(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = _folders(tmp_path)
    (in_dir / "d.png").write_bytes(drop_pngs[0])
    first = Watcher(detector, _options(in_dir, out))
    out.rename(tmp_path / "old-out")  # rm -rf OUT; mkdir OUT under a running watcher
    out.mkdir()
    second = Watcher(detector, _options(in_dir, out))  # locks the new folder
    with pytest.raises(OutputBusy, match="removed or replaced while this watcher held it"):
        first.run(once=True)
    assert second.run(once=True).ok == 1
    assert not list((tmp_path / "old-out").glob("*.json"))
    first.close()
    second.close()


# --- 11. temporary files --------------------------------------------------------------------
def test_temporary_files_left_by_a_kill_are_removed_at_start(detector: Any, tmp_path: Path) -> None:
    in_dir, out = _folders(tmp_path)
    (out / "sub").mkdir(parents=True)
    (out / "quarantine").mkdir()
    ours = [
        out / ".a.png.overlay.png.0f3c9a1e.tmp",
        out / "sub" / ".b.png.json.deadbeef.tmp",
        out / ".points.csv.12ab34cd.tmp",
        out / "quarantine" / ".bad.png.4242.tmp",  # an older version's quarantine copy
    ]
    theirs = [
        out / "notes.tmp",
        out / ".a.png.overlay.png.tmp",
        out / ".a.png.json.DEADBEEF.tmp",
        out / "sub" / "x.0f3c9a1e.tmp",
    ]
    for path in ours + theirs:
        path.write_bytes(b"partial")
    outside = tmp_path / ".c.png.json.0f3c9a1e.tmp"  # beside OUT_DIR, not in it
    outside.write_bytes(b"not ours to remove")
    with Watcher(detector, _options(in_dir, out)):
        assert not [p for p in ours if p.exists()]
        assert all(p.exists() for p in theirs) and outside.exists()


# --- the command ----------------------------------------------------------------------------
@posix_only
def test_watch_command_future_mtime_and_link(tiny: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir, out = _folders(tmp_path)
    (in_dir / "a.png").write_bytes(drop_pngs[0])
    ahead = time.time() + 3600  # touch -d '+1 hour'
    os.utime(in_dir / "a.png", (ahead, ahead))
    secret = tmp_path / "secret"
    secret.write_bytes(b"the secret")
    (in_dir / "innocent.png").symlink_to(secret)
    cmd = [sys.executable, "-c", CLI_SCRIPT, "watch", str(tiny.engine_dir), str(in_dir), "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "--once", "--poll", "0.01", "--threads", "1"], check=False, capture_output=True, timeout=300
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err  # the link is reported: cron hears about it
    assert "1 processed, 1 quarantined" in err and "Traceback" not in err
    assert err.count("innocent.png") == 1 and "a symbolic link" in err
    assert (out / "a.png.json").is_file()
    assert not any(b"the secret" in p.read_bytes() for p in out.rglob("*") if p.is_file())
