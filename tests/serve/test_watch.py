"""The hot-folder watcher: stability rule, exactly-once journal, quarantine, outputs, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import CLI_SCRIPT, LOW_THRESHOLD, cli_namespace

from crystal_rt.errors import EngineNotFound, InvalidImage
from crystal_rt.results.detection import Instance, InstanceMask
from crystal_rt.results.dispense import dispense_target
from crystal_rt.serve.journal import JOURNAL_NAME
from crystal_rt.serve.watch import Watcher, WatchOptions


def _options(in_dir: Path, out_dir: Path, **kw: Any) -> WatchOptions:
    return WatchOptions(in_dir=in_dir, out_dir=out_dir, stable_seconds=0.0, poll_seconds=0.01, **kw)


def _journal(out: Path) -> list[dict[str, Any]]:
    path = out / JOURNAL_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _points(out: Path) -> list[dict[str, str]]:
    with (out / "points.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folders(tmp_path: Path, drop_pngs: list[bytes]) -> tuple[Path, Path]:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i, data in enumerate(drop_pngs[:3]):
        (in_dir / f"drop{i}.png").write_bytes(data)
    (in_dir / "broken.png").write_bytes(b"this is text, not a PNG")
    (in_dir / "notes.txt").write_text("not matched by the patterns")
    (in_dir / ".hidden.png").write_bytes(drop_pngs[0])
    return in_dir, out


def test_once_processes_each_file_exactly_once(detector: Any, folders: tuple[Path, Path]) -> None:
    in_dir, out = folders
    stats = Watcher(detector, _options(in_dir, out)).run(once=True)
    assert (stats.ok, stats.quarantined, stats.errors) == (3, 1, 0)
    for i in range(3):
        data = json.loads((out / f"drop{i}.png.json").read_text())
        expected = detector.detect(in_dir / f"drop{i}.png").to_dict()
        assert data["instances"] == expected["instances"] and data["image"] == f"drop{i}.png"
        assert "dispense_target" not in data  # the tiny model has no "drop" class
    rows = _points(out)
    assert list(rows[0]) == ["image", "x", "y", "score", "label", "index"]
    assert len(rows) == sum(
        json.loads((out / f"drop{i}.png.json").read_text())["num_instances"] for i in range(3)
    )
    assert (in_dir / "broken.png").read_bytes() == b"this is text, not a PNG"  # IN is never changed
    assert (out / "quarantine" / "broken.png").read_bytes() == b"this is text, not a PNG"  # a copy
    reason = (out / "quarantine" / "broken.png.reason.txt").read_text()
    assert reason.startswith("InvalidImage: not a recognised image format")
    assert sorted(e["status"] for e in _journal(out)) == ["ok", "ok", "ok", "quarantined"]
    assert not list(out.glob(".*.tmp"))
    # A restart (a new Watcher on the same folders) does nothing again.
    again = Watcher(detector, _options(in_dir, out)).run(once=True)
    assert again.done == 0 and len(_points(out)) == len(rows) and len(_journal(out)) == 4
    # A changed file (new size/mtime) is a new image version: processed again.
    (in_dir / "drop0.png").write_bytes((in_dir / "drop1.png").read_bytes())
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 1


def test_file_still_being_written_waits_until_stable(
    detector: Any, tmp_path: Path, drop_pngs: list[bytes]
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    now = [time.time()]
    watcher = Watcher(detector, WatchOptions(in_dir, out, stable_seconds=10.0), clock=lambda: now[0])
    path = in_dir / "growing.png"
    data = drop_pngs[0]
    path.write_bytes(data[: len(data) // 2])
    assert watcher.poll() == [] and watcher.poll() == []  # young: mtime within 10 s
    now[0] += 20
    with path.open("ab") as fh:  # still growing, although old enough by the clock
        fh.write(data[len(data) // 2 :])
    os.utime(path, (now[0] - 15, now[0] - 15))
    assert watcher.poll() == []  # size changed since the last poll
    (in_dir / "empty.png").write_bytes(b"")
    outcomes = watcher.poll()  # unchanged since the last poll and 15 s old
    assert [(o.path, o.status) for o in outcomes] == [("growing.png", "ok")]
    assert watcher.poll() == [] and watcher.poll() == []  # an empty file is never picked up
    assert (in_dir / "empty.png").exists() and not (out / "quarantine").exists()
    assert (
        json.loads((out / "growing.png.json").read_text())["instances"]
        == detector.detect(data).to_dict()["instances"]
    )


def test_recursive_patterns_and_formats(detector: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir = tmp_path / "in"
    (in_dir / "plate1" / "A1").mkdir(parents=True)
    (in_dir / "plate1" / "A1" / "d.TIF").write_bytes(drop_pngs[0])  # a PNG named .TIF: sniffed
    (in_dir / "top.png").write_bytes(drop_pngs[1])
    (in_dir / "skip.jpg").write_bytes(drop_pngs[1])
    out = tmp_path / "results"
    opts = _options(
        in_dir, out, recursive=True, patterns=("*.tif", "*.png"), formats=("json", "coco", "overlay")
    )
    stats = Watcher(detector, opts).run(once=True)
    assert sorted(o.path for o in stats.outcomes) == ["plate1/A1/d.TIF", "top.png"]
    assert (out / "plate1" / "A1" / "d.TIF.json").is_file() and (
        out / "plate1" / "A1" / "d.TIF.overlay.png"
    ).is_file()
    assert isinstance(json.loads((out / "top.png.coco.json").read_text()), list)
    assert not (out / "points.csv").exists()
    assert Watcher(detector, opts).run(once=True).done == 0
    flat = Watcher(detector, _options(in_dir, tmp_path / "flat")).scan()
    assert sorted(flat) == ["skip.jpg", "top.png"]


def test_same_stem_different_suffix_keeps_both(detector: Any, tmp_path: Path, drop_pngs: list[bytes]) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "a.png").write_bytes(drop_pngs[0])
    (in_dir / "a.tif").write_bytes(drop_pngs[1])
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 2
    assert json.loads((out / "a.png.json").read_text())["image"] == "a.png"
    assert json.loads((out / "a.tif.json").read_text())["image"] == "a.tif"
    (in_dir / "a.png").write_bytes(drop_pngs[2])  # a new version of a.png replaces its own result
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 1
    assert sorted(p.name for p in out.glob("*.json")) == ["a.png.json", "a.tif.json"]


def test_crash_between_points_and_journal_leaves_no_duplicates(
    detector: Any, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    in_dir, out = folders
    Watcher(detector, _options(in_dir, out)).run(once=True, max_files=2)  # broken.png, drop0.png
    assert len(_journal(out)) == 2
    # Simulate a crash after points.csv was appended for drop2.png but before its journal line.
    with (out / "points.csv").open("a") as fh:
        fh.write("drop2.png,1.00,2.00,0.9000,crystal,0\n")
    with (out / JOURNAL_NAME).open("a") as fh:
        fh.write('{"path": "torn')  # a torn journal line is ignored
    stats = Watcher(detector, _options(in_dir, out)).run(once=True)
    assert stats.done == 2
    rows = _points(out)
    counts = {i: json.loads((out / f"drop{i}.png.json").read_text())["num_instances"] for i in range(3)}
    for i in range(3):
        assert sum(r["image"] == f"drop{i}.png" for r in rows) == counts[i]


def test_stop_event_ends_the_loop(detector: Any, folders: tuple[Path, Path]) -> None:
    in_dir, out = folders
    stop = threading.Event()
    watcher = Watcher(detector, _options(in_dir, out))
    thread = threading.Thread(target=lambda: watcher.run(stop))
    thread.start()
    deadline = time.monotonic() + 30
    while len(_journal(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    (in_dir / "late.png").write_bytes((in_dir / "drop0.png").read_bytes())
    while not (out / "late.png.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    watcher.close()
    assert not thread.is_alive() and (out / "late.png.json").exists()


def test_engine_error_is_retried_and_other_files_go_on(detector: Any, folders: tuple[Path, Path]) -> None:
    from crystal_rt.errors import CrystalRtError

    class Flaky:
        """Fails drop1.png once (as an engine fault would), then works."""

        def __init__(self) -> None:
            self.failed = False
            self.max_pixels, self.model = detector.max_pixels, detector.model

        def detect_pixels(self, pixels: Any, **kw: Any) -> Any:
            if kw.get("name") == "drop1.png" and not self.failed:
                self.failed = True
                raise CrystalRtError("ONNX Runtime failed: out of memory")
            return detector.detect_pixels(pixels, **kw)

    in_dir, out = folders
    stats = Watcher(Flaky(), _options(in_dir, out)).run(once=True)  # type: ignore[arg-type]
    assert (stats.ok, stats.quarantined, stats.errors) == (2, 1, 1)
    assert not (out / "drop1.png.json").exists() and (in_dir / "drop1.png").exists()
    assert Watcher(detector, _options(in_dir, out)).run(once=True).ok == 1  # retried, once
    assert (out / "drop1.png.json").exists() and len(_journal(out)) == 4


def test_stop_during_a_batch_finishes_the_current_file(detector: Any, folders: tuple[Path, Path]) -> None:
    in_dir, out = folders
    stop = threading.Event()
    stats = Watcher(detector, _options(in_dir, out), report=lambda _: stop.set()).run(stop)
    assert stats.done == 1 and len(_journal(out)) == 1


def test_missing_input_folder(detector: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="input folder not found"):
        Watcher(detector, _options(tmp_path / "nope", tmp_path / "out"))


def _instance(label: str, crop: np.ndarray, x0: int, y0: int, score: float = 0.9) -> Instance:
    h, w = crop.shape
    mask = InstanceMask(crop, x0, y0, 100, 120)
    return Instance(1 if label == "crystal" else 2, label, score, (x0, y0, x0 + w, y0 + h), mask)


def test_dispense_target_avoids_crystals_and_edges() -> None:
    yy, xx = np.mgrid[0:61, 0:81]
    drop = ((yy - 30) ** 2 / 30**2 + (xx - 40) ** 2 / 40**2) <= 1  # ellipse centred at (x 50, y 40)
    crystal = np.ones((16, 16), bool)  # right on the drop centre
    instances = [_instance("drop", drop, 10, 10), _instance("crystal", crystal, 42, 32)]
    target = dispense_target(instances, 100, 120, um_per_px=2.0)
    assert target is not None and target.method == "distance"
    assert drop[int(target.y) - 10, int(target.x) - 10]  # inside the drop
    assert not (42 <= target.x < 58 and 32 <= target.y < 48)  # not on the crystal
    assert target.clearance_px is not None and 5 < target.clearance_px < 20
    data = target.to_dict()
    # micrometres as an offset from the image centre (width // 2, height // 2), as CHiMP reports them
    assert data["offset_x_um"] == pytest.approx(2 * (target.x - 60)) and data["clearance_um"] > 0
    assert data["offset_y_um"] == pytest.approx(2 * (target.y - 50))
    alone = dispense_target([_instance("drop", drop, 10, 10)], 100, 120)  # no crystal: the centre of mass
    assert alone is not None and alone.method == "centroid" and alone.clearance_px is None
    assert abs(alone.x - 50) <= 1 and abs(alone.y - 40) <= 1
    assert "offset_x_um" not in alone.to_dict()
    assert dispense_target([_instance("crystal", crystal, 42, 32)], 100, 120) is None


def test_watch_command_once_and_bad_engine(
    tiny: Any, folders: tuple[Path, Path], monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    from crystal_rt.cli import main as cli_main
    from crystal_rt.cli import watch

    in_dir, out = folders
    args = cli_namespace(
        "watch", str(tiny.engine_dir), str(in_dir), "-o", str(out), "--once", "--stable-seconds", "0",
        "--poll", "0.01", "--threads", "1", "--score-threshold", str(LOW_THRESHOLD), "--formats", "csv",
    )  # fmt: skip
    assert watch.run(args) == 1  # --once with a quarantined file: non-zero for cron
    assert len(list(out.glob("drop*.json"))) == 3 and (out / "points.csv").is_file()
    assert "3 processed, 1 quarantined" in capsys.readouterr().err
    assert watch.run(args) == 0  # nothing new, nothing failed
    assert "0 processed, 0 quarantined, 0 error(s)" in capsys.readouterr().err
    with pytest.raises(EngineNotFound):
        watch.run(cli_namespace("watch", str(tmp_path / "none"), str(in_dir), "-o", str(out), "--once"))
    monkeypatch.setitem(cli_main.COMMANDS, "watch", "watch")
    assert cli_main.main(["watch", str(tmp_path / "none"), str(in_dir), "-o", str(out), "--once"]) == 1
    err = capsys.readouterr().err
    assert "engine not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_watch_command_stops_on_ctrl_c(tiny: Any, folders: tuple[Path, Path]) -> None:
    in_dir, out = folders
    cmd = [sys.executable, "-c", CLI_SCRIPT, "watch", str(tiny.engine_dir), str(in_dir), "-o", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--stable-seconds", "0", "--poll", "0.1", "--threads", "1"], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while len(_journal(out)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and "3 processed, 1 quarantined" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(_journal(out)) == 4
