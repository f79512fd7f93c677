"""The hot folder under real-world faults (issue 16, items 1-8): stalled writers, full disks, two
watchers, rewritten files, clashing names, files that crash decoders, loops, CSV injection.

Each test drives a Watcher on the tiny engine; clocks are fake where back-off or grace periods
matter, so that nothing here depends on timing.
"""

from __future__ import annotations

import builtins
import csv
import errno
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import CLI_SCRIPT

import crystal_rt.io.writers as writers_module
import crystal_rt.serve.watch as watch_module
from crystal_rt.errors import InvalidOption, OutputBusy
from crystal_rt.serve.journal import JOURNAL_NAME
from crystal_rt.serve.outlock import LOCK_NAME
from crystal_rt.serve.watch import Watcher, WatchOptions


def _options(in_dir: Path, out_dir: Path, **kw: Any) -> WatchOptions:
    kw.setdefault("stable_seconds", 0.0)
    return WatchOptions(in_dir=in_dir, out_dir=out_dir, poll_seconds=0.01, **kw)


def _journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / JOURNAL_NAME).read_bytes().splitlines()]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "points.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _assert_points_match_jsons(out: Path) -> None:
    """Every journaled image's rows exactly once, indexed 0..n-1, n = its JSON's instance count."""
    latest = {e["path"]: e for e in _journal(out) if e["status"] == "ok"}
    rows = _rows(out)
    for rel, entry in latest.items():
        data = json.loads((out / entry["outputs"][0]).read_text())
        cell = writers_module.csv_text(rel)
        mine = [r for r in rows if r["image"] == cell]
        assert [r["index"] for r in mine] == [str(i) for i in range(data["num_instances"])], rel
        assert data["source"]["size"] == entry["size"]
    assert len(rows) == sum(
        json.loads((out / e["outputs"][0]).read_text())["num_instances"] for e in latest.values()
    )


class Clock:
    def __init__(self) -> None:
        self.now = 2e9

    def __call__(self) -> float:
        return self.now


# --- 1. stalled writer ----------------------------------------------------------------------
def test_stalled_writer_keeps_its_file_and_the_finished_file_is_processed(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    data = drop_pngs[1]
    path = in_dir / "slow.png"
    path.write_bytes(data[: len(data) // 5])  # the writer stalls longer than --stable-seconds
    watcher = Watcher(detector, _options(in_dir, out))
    assert watcher.poll() == []
    assert [o.status for o in watcher.poll()] == ["quarantined"]
    assert path.read_bytes() == data[: len(data) // 5]  # never moved out of IN
    assert (out / "quarantine" / "slow.png").read_bytes() == data[: len(data) // 5]
    with path.open("ab") as fh:  # the writer finishes the file
        fh.write(data[len(data) // 5 :])
    assert watcher.poll() == []  # changed since the last poll
    assert [o.status for o in watcher.poll()] == ["ok"]
    assert path.read_bytes() == data
    assert json.loads((out / "slow.png.json").read_text())["source"]["size"] == len(data)
    assert not (out / "quarantine" / "slow.png").exists()  # the stale copy goes
    assert not (out / "quarantine" / "slow.png.reason.txt").exists()
    watcher.close()


# --- 2. full disk ---------------------------------------------------------------------------
class Disk:
    """OUT_DIR as a disk of ``capacity`` bytes: a write past it writes what fits, then fails with
    ENOSPC (space comes back when files are truncated or removed, as on a real disk)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.capacity = self.used()

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def take(self, n: int) -> int:
        return max(0, min(n, self.capacity - self.used()))


class _FullDiskOs:
    def __init__(self, disk: Disk) -> None:
        self.disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        k = self.disk.take(len(data))
        if k == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, bytes(data[:k]))


class _LimitedFile:
    def __init__(self, fh: Any, disk: Disk) -> None:
        self.fh, self.disk = fh, disk

    def write(self, data: bytes) -> int:
        k = self.disk.take(len(data))
        self.fh.write(data[:k])
        if k < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return k

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def __enter__(self) -> _LimitedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def test_full_disk_freed_page_by_page_duplicates_and_tears_nothing(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes], monkeypatch: Any
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(5):
        (in_dir / f"d{i}.png").write_bytes(drop_pngs[i % len(drop_pngs)])
    (in_dir / "bad.png").write_bytes(b"not an image at all")
    out.mkdir()
    disk = Disk(out)
    monkeypatch.setattr(watch_module, "os", _FullDiskOs(disk))

    def small_disk_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = builtins.open(file, mode, *args, **kw)  # noqa: SIM115 (closed by _LimitedFile)
        return _LimitedFile(fh, disk) if "x" in mode or "w" in mode else fh

    monkeypatch.setattr(writers_module, "open", small_disk_open, raising=False)
    clock = Clock()
    watcher = Watcher(detector, _options(in_dir, out), clock=clock)
    errors = 0
    for _ in range(400):  # free one page per poll until every file is done
        outcomes = watcher.poll()
        errors += sum(o.status == "error" for o in outcomes)
        if len(watcher.journal.entries) == 6 and not watcher._points_dirty:
            break
        disk.capacity += 4096
        clock.now += 1000  # past any back-off
    else:
        pytest.fail("the watcher never finished")
    watcher.close()
    monkeypatch.undo()
    assert errors > 0  # the disk did run full
    raw = (out / JOURNAL_NAME).read_bytes()
    assert raw.endswith(b"\n") and len(raw.splitlines()) == 6  # one whole line per file, none torn
    assert sorted(e["status"] for e in _journal(out)) == ["ok"] * 5 + ["quarantined"]
    _assert_points_match_jsons(out)
    assert (out / "quarantine" / "bad.png.reason.txt").read_text().startswith("InvalidImage: ")
    assert not list(out.rglob("*.tmp"))
    # A restart finds everything consistent: nothing is rewritten, nothing processed again.
    before = (out / "points.csv").read_bytes()
    assert Watcher(detector, _options(in_dir, out)).run(once=True).done == 0
    assert (out / "points.csv").read_bytes() == before


def test_torn_and_duplicated_rows_from_older_versions_are_repaired_on_start(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(3):
        (in_dir / f"d{i}.png").write_bytes(drop_pngs[i])
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 3
    good = (out / "points.csv").read_bytes()
    lines = (out / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    # What older versions left after a full disk: a journal line torn into the next, duplicated
    # and torn CSV rows; and a torn last journal line from a crash.
    glued = lines[0][:25] + lines[1]
    (out / JOURNAL_NAME).write_bytes(lines[0] + glued + lines[2] + b'{"path": "d9.png", "si')
    body = good.splitlines(keepends=True)
    (out / "points.csv").write_bytes(
        b"".join([*body, *body[1:], b"d1.png,3.0,4.", b"d2.png,1,2,0.5,crystal,0\n"])
    )
    watcher = Watcher(detector, _options(in_dir, out))
    assert (out / "points.csv").read_bytes() == good
    assert (out / JOURNAL_NAME).read_bytes().endswith(b"\n")
    assert watcher.run(once=True).done == 0  # the glued line still counts: nothing redone


# --- 3. two watchers ------------------------------------------------------------------------
def test_second_watcher_on_the_same_output_is_refused(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(3):
        (in_dir / f"d{i}.png").write_bytes(drop_pngs[i])
    first = Watcher(detector, _options(in_dir, out))
    with pytest.raises(OutputBusy, match=rf"pid {os.getpid()} .*two would process every image twice"):
        Watcher(detector, _options(in_dir, out))
    assert first.run(once=True).ok == 3  # run() lets go of the lock when it returns
    with Watcher(detector, _options(in_dir, out)) as second:
        assert second.run(once=True).done == 0
    assert len(_rows(out)) == sum(
        json.loads((out / f"d{i}.png.json").read_text())["num_instances"] for i in range(3)
    )


def test_lock_held_by_another_process_and_stale_after_kill(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out.mkdir()
    (in_dir / "d.png").write_bytes(drop_pngs[0])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from crystal_rt.serve.outlock import OutputLock\n"
            "lock = OutputLock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(OutputBusy, match=f"pid {holder.pid} "):
            Watcher(detector, _options(in_dir, out))
        holder.kill()  # kill -9: the lock file stays, the lock does not
        holder.wait(30)
        assert (out / LOCK_NAME).exists()
        assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# --- 4. rewritten file ----------------------------------------------------------------------
def test_rewritten_file_replaces_its_rows(detector: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "a.png").write_bytes(drop_pngs[0])
    (in_dir / "b.png").write_bytes(drop_pngs[1])
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 2
    counts = {json.loads((out / f"{n}.png.json").read_text())["num_instances"] for n in "ab"}
    assert counts != {0}  # the test needs rows to replace
    for version in (2, 3, 0):
        (in_dir / "a.png").write_bytes(drop_pngs[version])
        os.utime(in_dir / "a.png", ns=(version * 10**9 + 10**15,) * 2)
        assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 1
        _assert_points_match_jsons(out)
    assert len({e["size"] for e in _journal(out) if e["path"] == "a.png"}) >= 2


# --- 5. output names ------------------------------------------------------------------------
def test_output_names_are_unique_per_input_and_stable(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    names = ["x.png.jpg", "x.jpg", "x.png", "x.tif"]
    for i, name in enumerate(names):
        (in_dir / name).write_bytes(drop_pngs[i])
    assert (
        Watcher(detector, _options(in_dir, out, patterns=("*.png", "*.jpg", "*.tif"))).run(once=True).ok == 4
    )
    for name in names:
        assert json.loads((out / f"{name}.json").read_text())["image"] == name
    (out / "x.png.json").unlink()  # a restart in another order gives the same names
    (in_dir / "x.png").write_bytes(drop_pngs[3])
    assert Watcher(detector, _options(in_dir, out, patterns=("*.png",))).run(once=True).ok == 1
    assert json.loads((out / "x.png.json").read_text())["image"] == "x.png"
    assert json.loads((out / "x.png.jpg.json").read_text())["image"] == "x.png.jpg"


def test_long_file_name_completes(detector: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    long_a, long_b = "a" * 242 + ".png", "a" * 241 + "b.png"  # 246 characters
    (in_dir / long_a).write_bytes(drop_pngs[0])
    (in_dir / long_b).write_bytes(drop_pngs[1])
    opts = _options(in_dir, out, formats=("json", "csv", "coco", "overlay"))
    stats = Watcher(detector, opts).run(once=True)
    assert [o.status for o in stats.outcomes] == ["ok", "ok"]
    entries = {e["path"]: e for e in _journal(out)}
    assert entries[long_a]["outputs"] != entries[long_b]["outputs"]
    for entry in entries.values():
        for name in entry["outputs"]:
            assert (out / name).is_file() and len(name.encode()) <= 255
        assert json.loads((out / entry["outputs"][0]).read_text())["image"] == entry["path"]
    assert Watcher(detector, opts).run(once=True).done == 0


# --- 6. one file must not stop the watcher --------------------------------------------------
def test_undecodable_name_decoder_crash_and_memory_error_are_per_file(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes], monkeypatch: Any
) -> None:
    import crystal_rt.io.decode as decode_module

    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    latin1 = os.fsdecode(b"drop\xe9.png")  # a Latin-1 name on a UTF-8 system
    for name in (latin1, "huge.png", "crash.png", "z-last.png"):
        (in_dir / name).write_bytes(drop_pngs[0])
    real = decode_module.read_image_info

    def read_image_info(source: Any, **kw: Any) -> Any:
        if kw.get("name") == "huge.png":
            raise MemoryError
        if kw.get("name") == "crash.png":
            raise RuntimeError("decoder bug")
        return real(source, **kw)

    monkeypatch.setattr(decode_module, "read_image_info", read_image_info)
    stats = Watcher(detector, _options(in_dir, out)).run(once=True)
    got = {o.path: o.status for o in stats.outcomes}
    assert got == {latin1: "ok", "huge.png": "quarantined", "crash.png": "quarantined", "z-last.png": "ok"}
    assert (out / f"{latin1}.json").is_file()
    assert (
        any(r["image"] == "drop\\xe9.png" for r in _rows(out))
        or not json.loads((out / f"{latin1}.json").read_text())["num_instances"]
    )
    assert "not enough memory" in (out / "quarantine" / "huge.png.reason.txt").read_text()
    assert not (out / "quarantine" / "huge.png").exists()  # recorded, not copied
    assert "RuntimeError: decoder bug" in (out / "quarantine" / "crash.png.reason.txt").read_text()
    monkeypatch.undo()
    assert Watcher(detector, _options(in_dir, out)).run(once=True).done == 0  # and on restart


def test_detection_crash_is_an_error_not_a_dead_watcher(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    class Broken:
        max_pixels, model = detector.max_pixels, detector.model

        def detect_pixels(self, pixels: Any, **kw: Any) -> Any:
            if kw["name"] == "a.png":
                raise MemoryError
            return detector.detect_pixels(pixels, **kw)

    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "a.png").write_bytes(drop_pngs[0])
    (in_dir / "b.png").write_bytes(drop_pngs[1])
    stats = Watcher(Broken(), _options(in_dir, out)).run(once=True)  # type: ignore[arg-type]
    assert {o.path: o.status for o in stats.outcomes} == {"a.png": "error", "b.png": "ok"}
    assert stats.failed


def test_file_over_the_byte_limit_is_quarantined_unread(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "big.png").write_bytes(drop_pngs[0] + b"\0" * 5000)
    (in_dir / "small.png").write_bytes(drop_pngs[0])
    stats = Watcher(detector, _options(in_dir, out, max_bytes=len(drop_pngs[0]) + 10)).run(once=True)
    assert {o.path: o.status for o in stats.outcomes} == {"big.png": "quarantined", "small.png": "ok"}
    reason = (out / "quarantine" / "big.png.reason.txt").read_text()
    assert "file too large" in reason and not (out / "quarantine" / "big.png").exists()


# --- 7. loops -------------------------------------------------------------------------------
def test_failing_file_backs_off_instead_of_retrying_every_poll(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    from crystal_rt.errors import CrystalRtError

    calls: list[float] = []
    clock = Clock()

    class Failing:
        max_pixels, model = detector.max_pixels, detector.model

        def detect_pixels(self, pixels: Any, **kw: Any) -> Any:
            calls.append(clock.now)
            raise CrystalRtError("No space left on device")

    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "a.png").write_bytes(drop_pngs[0])
    watcher = Watcher(Failing(), _options(in_dir, out, retry_max_seconds=8.0), clock=clock)  # type: ignore[arg-type]
    for _ in range(40):  # 40 polls, 0.5 s apart
        watcher.poll()
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) <= 8 and gaps[:4] == [1.0, 2.0, 4.0, 8.0] and all(g == 8.0 for g in gaps[3:])
    (in_dir / "a.png").write_bytes(drop_pngs[1])  # a changed file is tried at once
    watcher.poll()
    n = len(calls)
    watcher.poll()
    assert len(calls) == n + 1
    watcher.close()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_folder_in_the_input_folder_is_refused(detector: Any, tmp_path: Path, where: str) -> None:
    out = tmp_path if where == "same" else tmp_path / "results" / "run1"
    with pytest.raises(InvalidOption, match="would be read as new images"):
        Watcher(detector, _options(tmp_path, out))
    assert not (tmp_path / "results").exists()


def test_output_path_that_is_a_file_is_refused(detector: Any, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").write_text("x")
    with pytest.raises(InvalidOption, match="is a file, not a folder"):
        Watcher(detector, _options(tmp_path / "in", tmp_path / "out"))


def test_empty_file_is_quarantined_by_record_after_the_grace_period(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    path = in_dir / "empty.png"
    path.write_bytes(b"")
    clock = Clock()
    os.utime(path, (clock.now, clock.now))
    watcher = Watcher(detector, _options(in_dir, out, empty_grace_seconds=60.0), clock=clock)
    assert watcher.poll() == [] and watcher.poll() == []
    clock.now += 61
    outcomes = watcher.poll()
    assert [(o.path, o.status) for o in outcomes] == [("empty.png", "quarantined")]
    assert "empty file" in (out / "quarantine" / "empty.png.reason.txt").read_text()
    assert path.exists() and not (out / "quarantine" / "empty.png").exists()
    assert watcher.poll() == []  # reported once
    path.write_bytes(drop_pngs[0])  # the imager writes it after all
    os.utime(path, (clock.now, clock.now))
    assert watcher.poll() == [] and [o.status for o in watcher.poll()] == ["ok"]
    watcher.close()


def test_watch_once_messages_once_and_exit_status(tiny: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "good.png").write_bytes(drop_pngs[0])
    (in_dir / "broken.png").write_bytes(b"text")
    cmd = [sys.executable, "-c", CLI_SCRIPT, "watch", str(tiny.engine_dir), str(in_dir), "-o", str(out)]
    opts = ["--once", "--stable-seconds", "0", "--poll", "0.01", "--threads", "1"]
    proc = subprocess.run([*cmd, *opts], check=False, capture_output=True, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err  # a quarantined file: cron hears about it
    assert err.count("broken.png") == 1 and "Traceback" not in err
    proc = subprocess.run([*cmd, *opts], check=False, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    inside = subprocess.run(
        [*cmd[:-1], str(in_dir / "res"), *opts], check=False, capture_output=True, timeout=300
    )
    assert inside.returncode == 1 and b"would be read as new images" in inside.stderr
    assert b"Traceback" not in inside.stderr


# --- 8. CSV injection -----------------------------------------------------------------------
def test_formula_file_names_are_neutralised_in_points_csv(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    names = ['=HYPERLINK("x","y").png', "+cmd.png", "@SUM(1).png", "-1.png"]
    for name in names:
        (in_dir / name).write_bytes(drop_pngs[3])
    opts = _options(in_dir, out)
    assert Watcher(detector, opts).run(once=True).ok == 4
    assert json.loads((out / f"{names[0]}.json").read_text())["num_instances"] > 0
    cells = {r["image"] for r in _rows(out)}
    assert cells == {"'" + n for n in names}
    _assert_points_match_jsons(out)
    assert Watcher(detector, opts).run(once=True).done == 0
    assert {r["image"] for r in _rows(out)} == cells
