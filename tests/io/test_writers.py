"""Tests for crystal_rt.io.writers: JSON, COCO results, points CSV, overlay PNG, atomic writes."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from crystal_rt.io.writers import (
    POINT_FIELDS,
    atomic_write_bytes,
    caption_chars,
    coco_results,
    contact_sheet,
    csv_text,
    overlay_suffix,
    render_overlay,
    write_coco,
    write_contact_sheet,
    write_json,
    write_overlay,
    write_points_csv,
)
from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask
from crystal_rt.results.rle import rle_to_mask

# pycocotools' decode trips a NumPy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

HEIGHT, WIDTH = 90, 120


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0


def _result(image: str | None = "drops/well_A1.png") -> DetectionResult:
    # Instance 1: an ellipse in a 20 x 30 crop at (x0, y0) = (10, 15).
    crop1 = _ellipse(20, 30)
    # Instance 2: an asymmetric L shape in a 12 x 16 crop at (95, 60), so that x and y are not symmetric.
    crop2 = np.zeros((12, 16), dtype=bool)
    crop2[:, :4] = True
    crop2[-3:, :] = True
    inst1 = Instance(
        label=1,
        label_name="crystal",
        score=0.9731234567,
        box=(10.25, 15.5, 40.0, 35.0),
        mask=InstanceMask(crop1, 10, 15, HEIGHT, WIDTH),
    )
    inst2 = Instance(
        label=2,
        label_name="precipitate",
        score=0.61,
        box=(95.0, 60.0, 111.0, 72.0),
        mask=InstanceMask(crop2, 95, 60, HEIGHT, WIDTH),
    )
    return DetectionResult(
        width=WIDTH, height=HEIGHT, instances=[inst1, inst2], image=image, timings_ms={"total": 12.3456}
    )


def _no_tmp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# --------------------------------------------------------------------------- JSON


def test_write_json(tmp_path: Path) -> None:
    result = _result()
    path = write_json(result, tmp_path / "out" / "well_A1.json")
    assert path == tmp_path / "out" / "well_A1.json"
    data = json.loads(path.read_text())
    assert data["width"] == WIDTH
    assert data["height"] == HEIGHT
    assert data["image"] == "drops/well_A1.png"
    assert data["num_instances"] == 2
    assert len(data["instances"]) == 2
    for entry, inst in zip(data["instances"], result.instances, strict=True):
        assert entry["label"] == inst.label
        assert entry["label_name"] == inst.label_name
        assert entry["score"] == pytest.approx(inst.score, abs=1e-6)
        x1, y1, x2, y2 = inst.box
        assert entry["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        full = inst.mask.to_full()
        assert entry["mask"]["size"] == [HEIGHT, WIDTH]
        np.testing.assert_array_equal(rle_to_mask(entry["mask"]), full)
        assert entry["area"] == int(full.sum())
        assert isinstance(entry["centroid"], dict)
        assert set(entry["centroid"]) == {"x", "y"}
        ys, xs = np.nonzero(full)
        assert entry["centroid"]["x"] == pytest.approx(xs.mean(), abs=1e-3)
        assert entry["centroid"]["y"] == pytest.approx(ys.mean(), abs=1e-3)
    # Known values for the first instance: bbox xywh, and the L shape's centroid is off-centre.
    assert data["instances"][0]["bbox"] == pytest.approx([10.25, 15.5, 29.75, 19.5])
    centroid2 = data["instances"][1]["centroid"]
    assert centroid2["x"] < 95 + 8  # mass in the left column block
    assert centroid2["y"] > 60 + 6  # and in the bottom rows
    _no_tmp_files(tmp_path)


def test_write_json_empty_result(tmp_path: Path) -> None:
    path = write_json(DetectionResult(width=5, height=4, instances=[]), tmp_path / "empty.json")
    data = json.loads(path.read_text())
    assert data["instances"] == []
    assert data["num_instances"] == 0
    assert (data["width"], data["height"]) == (5, 4)


def test_centroid_empty_mask_is_box_centre() -> None:
    inst = Instance(
        1, "crystal", 0.7, (10.0, 20.0, 30.0, 60.0), InstanceMask(np.zeros((0, 0), bool), 0, 0, 90, 90)
    )
    assert inst.centroid == {"x": 20.0, "y": 40.0}
    assert inst.area == 0


# --------------------------------------------------------------------------- COCO


def _coco_gt(image_ids_and_names: list[tuple[int, str]]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [
            {"id": i, "file_name": name, "width": WIDTH, "height": HEIGHT} for i, name in image_ids_and_names
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "crystal"}, {"id": 2, "name": "precipitate"}],
    }
    coco.createIndex()
    return coco


def test_write_coco_loads_with_pycocotools(tmp_path: Path) -> None:
    results = [_result("a/one.png"), _result("b/two.png")]
    results[1].instances = results[1].instances[:1]
    path = write_coco(results, tmp_path / "coco.json")
    entries = json.loads(path.read_text())
    assert len(entries) == 3
    assert [e["image_id"] for e in entries] == [1, 1, 2]
    assert [e["file_name"] for e in entries] == ["one.png", "one.png", "two.png"]
    assert [e["category_id"] for e in entries] == [1, 2, 1]

    gt = _coco_gt([(1, "one.png"), (2, "two.png")])
    dt = gt.loadRes(str(path))
    anns = dt.loadAnns(dt.getAnnIds())
    assert len(anns) == 3
    for ann, inst in zip(anns, [*results[0].instances, *results[1].instances], strict=True):
        np.testing.assert_array_equal(dt.annToMask(ann).astype(bool), inst.mask.to_full())
        assert ann["score"] == pytest.approx(inst.score, abs=1e-6)
        assert ann["category_id"] == inst.label
    # The file's area is the mask's pixel count (loadRes replaces it by the bbox area).
    assert [e["area"] for e in entries] == [i.area for i in [*results[0].instances, *results[1].instances]]
    # loadRes also accepts the list in memory (the same entries).
    assert len(gt.loadRes(coco_results(results)).getAnnIds()) == 3
    _no_tmp_files(tmp_path)


def test_coco_results_image_ids_and_bbox() -> None:
    result = _result(None)
    entries = coco_results([result], image_ids=[42])
    assert [e["image_id"] for e in entries] == [42, 42]
    assert entries[0]["file_name"] is None
    assert entries[0]["bbox"] == pytest.approx([10.25, 15.5, 29.75, 19.5])
    assert entries[1]["area"] == result.instances[1].area


# --------------------------------------------------------------------------- CSV


def test_write_points_csv(tmp_path: Path) -> None:
    first = _result("one.png")
    second = _result("two.png")
    second.instances = second.instances[1:]
    empty = DetectionResult(width=10, height=10, instances=[], image="none.png")
    path = write_points_csv([first, empty, second], tmp_path / "points.csv")
    text = path.read_text()
    assert text.splitlines()[0] == "image,x,y,score,label,index"  # the watcher's columns too
    rows = list(csv.DictReader(text.splitlines()))
    assert tuple(rows[0]) == POINT_FIELDS
    assert len(rows) == 3
    assert [r["image"] for r in rows] == ["one.png", "one.png", "two.png"]
    assert [r["index"] for r in rows] == ["0", "1", "0"]
    assert [r["label"] for r in rows] == ["crystal", "precipitate", "precipitate"]
    insts = [*first.instances, *second.instances]
    for row, inst in zip(rows, insts, strict=True):
        ys, xs = np.nonzero(inst.mask.to_full())
        assert float(row["x"]) == pytest.approx(xs.mean(), abs=0.005)
        assert float(row["y"]) == pytest.approx(ys.mean(), abs=0.005)
        assert float(row["score"]) == pytest.approx(inst.score, abs=5e-5)
    _no_tmp_files(tmp_path)


def test_write_points_csv_header_only(tmp_path: Path) -> None:
    path = write_points_csv([], tmp_path / "p.csv")
    assert path.read_text() == "image,x,y,score,label,index\n"


@pytest.mark.parametrize(
    "name", ['=HYPERLINK("http://x","y").jpg', "+cmd.jpg", "-2+3.jpg", "@SUM(1).jpg", "\tx.jpg", "\rx.jpg"]
)
def test_points_csv_neutralises_formulas(tmp_path: Path, name: str) -> None:
    result = _result(name)
    result.instances[0] = dataclasses.replace(result.instances[0], label_name="=1+1")
    rows = list(csv.DictReader(write_points_csv([result], tmp_path / "p.csv").open(newline="")))
    expected = "\\rx.jpg" if name.startswith("\r") else "'" + name  # CR written as \\r: not a formula
    assert {r["image"] for r in rows} == {expected}
    assert rows[0]["label"] == "'=1+1" and rows[1]["label"] == "precipitate"
    assert csv_text("plain.png") == "plain.png" and csv_text("a=b.png") == "a=b.png"


def test_csv_text_keeps_undecodable_file_name_bytes() -> None:
    name = os.fsdecode(b"drop\xff.png")  # a Latin-1 name on a UTF-8 system: a lone surrogate
    assert csv_text(name) == "drop\\xff.png"
    assert csv_text(name).encode("utf-8")


# --------------------------------------------------------------------------- overlay


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    gray8 = rng.integers(40, 80, size=(HEIGHT, WIDTH), dtype=np.uint8)
    rgb8 = rng.integers(40, 80, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    gray16 = rng.integers(1000, 3000, size=(HEIGHT, WIDTH)).astype(np.uint16)
    return {"gray8": gray8, "rgb8": rgb8, "gray16": gray16}


@pytest.mark.parametrize("kind", ["gray8", "rgb8", "gray16"])
def test_write_overlay(tmp_path: Path, kind: str) -> None:
    image = _images()[kind]
    before = image.copy()
    result = _result()
    path = write_overlay(image, result, tmp_path / "overlays" / f"{kind}.png")
    assert path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None
    assert bgr.shape == (HEIGHT, WIDTH, 3)
    assert bgr.dtype == np.uint8
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int64)
    # The original as 8-bit RGB (16-bit is stretched; compare where masks are with a margin).
    if image.dtype == np.uint8:
        original = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    else:
        top = float(np.percentile(image, 99.9))
        g = np.clip(image.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
        original = np.repeat(g[..., None], 3, axis=2)
    original = original.astype(np.int64)
    for inst in result.instances:
        inside = inst.mask.to_full()
        # Every pixel inside a mask is tinted (differs from the original) ...
        changed = np.any(rgb != original, axis=2)
        assert changed[inside].all(), f"{np.count_nonzero(~changed[inside])} mask pixels unchanged"
    # ... while a region far from every instance is left as it was.
    np.testing.assert_array_equal(rgb[45:, :80], original[45:, :80])
    np.testing.assert_array_equal(image, before)  # the input is not drawn on
    _no_tmp_files(tmp_path)


def test_overlay_without_instances_is_the_image(tmp_path: Path) -> None:
    image = _images()["rgb8"]
    path = write_overlay(image, DetectionResult(width=WIDTH, height=HEIGHT, instances=[]), tmp_path / "o.png")
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, image)


def test_overlay_format_follows_the_input_and_jpeg_is_smaller(tmp_path: Path) -> None:
    """Issue 31: a PNG overlay of a JPEG photo costs several times the photo: JPEG inputs get JPEG
    overlays unless PNG is asked for."""
    assert overlay_suffix("plate/A1.JPG") == overlay_suffix("a.jpeg") == ".overlay.jpg"
    assert overlay_suffix("a.png") == overlay_suffix("a.tif") == ".overlay.png"
    assert (
        overlay_suffix("a.jpg", "png") == ".overlay.png" and overlay_suffix("a.png", "jpeg") == ".overlay.jpg"
    )
    with pytest.raises(ValueError, match="overlay format"):
        overlay_suffix("a.jpg", "gif")
    photo = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8), (9, 9), 3)
    result = _result()
    jpg = write_overlay(photo, result, tmp_path / "o.overlay.jpg")
    png = write_overlay(photo, result, tmp_path / "o.overlay.png")
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and png.read_bytes()[:4] == b"\x89PNG"
    assert jpg.stat().st_size * 3 < png.stat().st_size
    assert np.abs(cv2.imread(str(jpg)).astype(int) - cv2.imread(str(png)).astype(int)).mean() < 4


def test_overlay_labels_off_index_score() -> None:
    image, result = _images()["rgb8"], _result()
    off, index, score = (render_overlay(image, result, labels=labels) for labels in ("off", "index", "score"))
    text = {
        k: np.count_nonzero(np.any(v != off, axis=2)) for k, v in {"index": index, "score": score}.items()
    }
    assert 0 < text["index"] < text["score"]  # "0" is drawn where "crystal 0.97" was
    with pytest.raises(ValueError, match="overlay labels"):
        render_overlay(image, result, labels="names")  # type: ignore[arg-type]


def test_contact_sheet_lays_out_a_plate(tmp_path: Path) -> None:
    tiles = [(np.full((40, 60, 3), (4 * i, 100, 200), np.uint8), f"{i}: well {i}") for i in range(60)]
    sheet = contact_sheet(tiles, side=32)
    rows, cols = 5, 12  # 60 pictures: rows of 12, as a plate's
    cell_w = (sheet.shape[1] - 4) // cols
    cell_h = (sheet.shape[0] - 4) // rows
    assert (sheet.shape[1] - 4) % cols == 0 and (sheet.shape[0] - 4) % rows == 0 and cell_w == 36
    for i in (0, 13, 59):  # each picture in its cell, shrunk to fit (60x40 -> 32x21), centred
        r, c = divmod(i, cols)
        y, x = 4 + r * cell_h + 16, 4 + c * cell_w + 16
        np.testing.assert_array_equal(sheet[y, x], (4 * i, 100, 200))
    assert caption_chars(256) >= 20  # a well name and a count fit under a 256 px picture
    few = contact_sheet(tiles[:3], side=32)
    assert (few.shape[1] - 4) // 36 == 3  # three pictures: one row
    path = write_contact_sheet(tiles[:3], tmp_path / "sheet.jpg", side=32)
    assert cv2.imread(str(path)).shape == few.shape
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_long_name_and_failure_leave_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    long_name = "x" * 250 + ".json"  # 255 bytes: a temporary ".NAME.tmp" would be 260
    assert atomic_write_bytes(tmp_path / long_name, b"ok").read_bytes() == b"ok"

    def full_disk(self: Path, target: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(tmp_path / "b.json", b"data")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [long_name]


def test_atomic_write_onto_a_folder_writes_nothing_outside_it(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "target", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_all_writers_leave_no_tmp(tmp_path: Path) -> None:
    result = _result()
    write_json(result, tmp_path / "r.json")
    write_coco([result], tmp_path / "c.json")
    write_points_csv([result], tmp_path / "p.csv")
    write_overlay(_images()["gray8"], result, tmp_path / "o.png")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.json", "o.png", "p.csv", "r.json"]
    assert not list(tmp_path.glob(".*.tmp"))
