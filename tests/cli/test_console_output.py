"""Issue 31 (results a person can read and look at) and issue 29 item 10 (file names cannot forge
console lines): what ``detect`` and ``watch`` print, the summary for scripts, overlays and the
contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.cli.main import main
from crystal_rt.console import distinct_names, printable, shown
from crystal_rt.data.synthetic import make_drop

WELLS = ("A01", "A02", "B12")
PREFIX = "RMM3_01_2026-11-05_"
#: a name that held a newline printed a line of its own; an escape code reached the terminal
EVIL = "a.png\ndone evil.png: 42 instance(s)\x1b[2J[red]x[\\red].png"


def test_printable_and_shown_keep_user_text_on_one_visible_line() -> None:
    assert printable("a\nb\rc\td\x1b[31m\x7f\u202eé.jpg") == "a\\nb\\rc\\td\\x1b[31m\\x7f\\u202eé.jpg"
    assert printable(b"caf\xe9.jpg".decode("utf-8", "surrogateescape")) == "caf\\xe9.jpg"
    assert printable("plain name.jpg") == "plain name.jpg"
    assert (
        shown('eng[v2]/ pip install "crystal-rt[gpu-cu13]"')
        == 'eng\\[v2]/ pip install "crystal-rt\\[gpu-cu13]"'
    )
    from rich.console import Console

    out = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    out.print(shown('eng[v2]/ "crystal-rt[gpu-cu13]" [bold]x[/]\nnext'))
    assert out.export_text() == 'eng[v2]/ "crystal-rt[gpu-cu13]" [bold]x[/]\\nnext\n'


def test_distinct_names_show_what_tells_a_plate_apart() -> None:
    names = [f"{PREFIX}{w}_drop1_visible.jpg" for w in WELLS]
    assert distinct_names(names, None) == names and distinct_names(names, 60) == names  # they fit
    assert distinct_names(names, 14) == [f"…{w}_drop1_vi…" for w in WELLS]
    assert distinct_names(names, 5) == [f"…{w}…" for w in WELLS]
    assert distinct_names(["plate/a.jpg", "plate/b.jpg"], 5) == ["…a.j…", "…b.j…"]
    assert distinct_names(["x\ny.jpg", "z.jpg"], 20) == ["x\\ny.jpg", "z.jpg"]


@pytest.fixture
def plate(tmp_path: Path) -> Path:
    """Three drops of a plate (JPEG, long shared names), a PNG, and a file that is not an image."""
    folder = tmp_path / "plate"
    folder.mkdir()
    for i, well in enumerate(WELLS):
        cv2.imwrite(str(folder / f"{PREFIX}{well}_drop1_visible_light.jpg"), make_drop(3 + i, 160, 200).image)
    cv2.imwrite(str(folder / "extra.png"), make_drop(9, 120, 150).image)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def _detect(engine: Path, *argv: object) -> int:
    return main(["detect", str(engine), *map(str, argv), "--threads", "1"])


def test_detect_table_summary_overlays_and_contact_sheet(
    demo_ort_engine: Path, plate: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a terminal of 80 columns (the width setter would stick)
    out = tmp_path / "out"
    summary = tmp_path / "summary.json"
    code = _detect(demo_ort_engine, plate, "-o", out, "--contact-sheet", "--summary-json", summary)
    captured = capsys.readouterr()
    assert code == 1  # broken.jpg
    rows = [line for line in captured.out.splitlines() if line.startswith("│")]
    assert len(rows) == 4 and len(set(rows)) == 4
    for well in WELLS:  # the well is on its row, not only the names' shared start
        assert sum(well in row for row in rows) == 1, captured.out
    assert max(len(line) for line in captured.out.splitlines()) <= 80
    assert "instances" in captured.out and "total" in captured.out  # no column squeezed out
    assert all(row.split("│")[2].strip().isdigit() for row in rows)
    # The summary for scripts: every image, its files, and the failure with why.
    data = json.loads(summary.read_text())
    assert (data["images"], data["succeeded"], data["failed"]) == (5, 4, 1)
    assert data["failures"] == [
        {"image": "broken.jpg", "error": "InvalidImage", "message": "not a recognised image format"}
    ]
    by_name = {r["image"]: r for r in data["results"]}
    assert data["instances"] == sum(r["instances"] for r in data["results"])
    for result in by_name.values():
        assert result["instances"] == json.loads((out / result["files"]["json"]).read_text())["num_instances"]
        assert (out / result["files"]["overlay"]).is_file()
    # JPEG inputs get JPEG overlays (a fraction of a PNG's size), the PNG input a PNG one.
    jpg = f"{PREFIX}A01_drop1_visible_light.jpg"
    assert by_name[jpg]["files"]["overlay"] == f"{jpg}.overlay.jpg"
    assert by_name["extra.png"]["files"]["overlay"] == "extra.png.overlay.png"
    assert cv2.imread(str(out / f"{jpg}.overlay.jpg")).shape[:2] == (160, 200)
    # The contact sheet: every drop of the run on one picture.
    assert data["contact_sheet"] == "contact_sheet.jpg"
    sheet = cv2.imread(str(out / "contact_sheet.jpg"))
    assert sheet is not None and sheet.shape[1] >= 2 * 256 and sheet.shape[0] >= 2 * 256
    # Asked for PNG overlays now: the JPEG one of the earlier run is not left beside it.
    assert _detect(demo_ort_engine, plate / jpg, "-o", out, "--overlay-format", "png", "-q") == 0
    assert (out / f"{jpg}.overlay.png").is_file() and not (out / f"{jpg}.overlay.jpg").exists()
    png_size = (out / f"{jpg}.overlay.png").stat().st_size
    assert (out / f"{PREFIX}A02_drop1_visible_light.jpg.overlay.jpg").stat().st_size < png_size


def test_quiet_and_summary_on_stdout(demo_ort_engine: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "one.png"), make_drop(5, 120, 150).image)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert _detect(demo_ort_engine, folder, "-o", tmp_path / "o", "-q") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [line.split(":")[0] for line in captured.err.strip().splitlines()] == [
        "skipped bad.png",
        "1 of 2 image(s) could not be read",
    ]
    assert _detect(demo_ort_engine, folder, "-o", tmp_path / "o", "--summary-json", "-") == 1
    data = json.loads(capsys.readouterr().out)  # the JSON alone: no table around it
    assert [r["image"] for r in data["results"]] == ["one.png"] and data["failed"] == 1


def test_no_empty_table_when_every_file_fails(demo_ort_engine: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "b.tif"):
        (folder / name).write_bytes(b"not an image")
    assert _detect(demo_ort_engine, folder, "-o", tmp_path / "o") == 1
    captured = capsys.readouterr()
    assert "image" not in captured.out and "┏" not in captured.out
    assert "2 of 2 image(s) could not be read" in captured.err


def test_file_names_cannot_forge_console_lines(demo_ort_engine: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / EVIL), make_drop(5, 120, 150).image)
    assert (folder / EVIL).is_file()
    assert _detect(demo_ort_engine, folder, "-o", tmp_path / "o") == 0
    watch = ["watch", str(demo_ort_engine), str(folder), "-o", str(tmp_path / "w"), "--once"]
    assert main([*watch, "--stable-seconds", "0"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "\x1b" not in text
    for line in text.splitlines():
        assert not line.lstrip("│ ").startswith("done evil"), text
    assert f"done {printable(EVIL)}: " in captured.err  # watch's line, whole, with the name visible


def test_overlay_labels(demo_ort_engine: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "d.png"), make_drop(3, 300, 400).image)
    pictures = {}
    for labels in ("score", "index", "off"):
        out = tmp_path / labels
        assert _detect(demo_ort_engine, folder, "-o", out, "--overlay-labels", labels, "-q") == 0
        assert json.loads((out / "d.png.json").read_text())["num_instances"] > 0
        pictures[labels] = cv2.imread(str(out / "d.png.overlay.png")).astype(int)
    text_score = np.count_nonzero(np.abs(pictures["score"] - pictures["off"]).sum(axis=2))
    text_index = np.count_nonzero(np.abs(pictures["index"] - pictures["off"]).sum(axis=2))
    assert 0 < text_index < text_score  # an index is a shorter label than "crystal 0.97"


def test_detect_parser_choices_are_the_writers() -> None:
    from crystal_rt.cli import detect
    from crystal_rt.io import writers

    assert detect.OVERLAY_FORMATS == writers.OVERLAY_FORMATS
    assert detect.OVERLAY_LABELS == writers.OVERLAY_LABELS
    assert detect.OVERLAY_SUFFIXES == writers.OVERLAY_SUFFIXES
