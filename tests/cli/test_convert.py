"""``crystal-rt convert``: format detection, merging, file names, the summary and one-line errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from crystal_rt.cli.main import main
from crystal_rt.data.builder import CocoBuilder
from crystal_rt.data.coco import load_coco
from crystal_rt.data.convert import convert, detect_format
from crystal_rt.errors import InvalidDataset
from crystal_rt.io.decode import read_image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 20, 24


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _labelme(path: Path, shapes: list, image: str | None, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": "5.4.1",
        "shapes": [
            {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}
            for label, kind, points in shapes
        ],
        "imagePath": image,
        "imageData": None if data is None else base64.b64encode(data).decode(),
        "imageHeight": H,
        "imageWidth": W,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def labelme_dir(tmp_path) -> Path:
    src = tmp_path / "data" / "labelme"
    src.mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), np.full((H, W), 100, np.uint8))
    _labelme(
        src / "a.json",
        [("crystal", "polygon", [[2, 2], [8, 2], [8, 8]]), ("crystal", "rectangle", [[10, 10], [15, 14]])],
        "a.png",
    )
    _labelme(
        src / "b.json", [("crystal", "circle", [[12, 10], [12, 14]])], None, _png(np.zeros((H, W), np.uint8))
    )
    return src


@pytest.fixture
def mask_root(tmp_path) -> Path:
    root = tmp_path / "data" / "dsb"
    for name, box in (("s1", (1, 1, 6, 6)), ("s2", (3, 4, 20, 18))):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        cv2.imwrite(str(root / name / "images" / f"{name}.png"), np.full((H, W), 50, np.uint8))
        mask = np.zeros((H, W), np.uint8)
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 1
        cv2.imwrite(str(root / name / "masks" / "0.png"), mask)
    return root


@pytest.fixture
def coco_file(tmp_path) -> Path:
    folder = tmp_path / "data" / "coco"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "c.png"), np.zeros((H, W), np.uint8))
    builder = CocoBuilder(("precipitate", "crystal"))
    image = builder.add_image("c.png", W, H)
    builder.add_polygons(image, [[1, 1, 10, 1, 10, 10]], "precipitate")
    builder.add_polygons(image, [[12, 12, 20, 12, 20, 18]], "crystal")
    return builder.build().write(folder / "coco.json")


def test_detect_format(labelme_dir, mask_root, coco_file, tmp_path):
    assert detect_format(coco_file) == "coco"
    assert detect_format(labelme_dir / "a.json") == "labelme"
    assert detect_format(labelme_dir) == "labelme"
    assert detect_format(mask_root) == "masks"
    assert detect_format(mask_root / "s1") == "masks"
    with pytest.raises(InvalidDataset, match=r"holds COCO JSON coco\.json"):
        detect_format(coco_file.parent)
    with pytest.raises(InvalidDataset, match="file or folder not found"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(InvalidDataset, match="cannot tell the annotation format"):
        detect_format(tmp_path / "x.txt")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InvalidDataset, match="neither COCO"):
        detect_format(tmp_path / "other.json")


def test_convert_labelme_folder_cli(labelme_dir, tmp_path, capsys):
    out = tmp_path / "data" / "train.json"
    assert main(["convert", str(labelme_dir), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"2 image(s), 3 instance(s), 1 class(es) (crystal) -> {out}"
    assert lines[1] == (
        f"file names: 2 relative to {out.parent}; train and evaluate find them without --images"
    )
    assert lines[2] == f"next: crystal-rt train --data {out} -o run/"
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["labelme/a.png", "train_images/b.png"]
    ds = load_coco(out)
    for image in ds.images:
        assert read_image(ds.image_path(image.id)).shape == (H, W)
    gt = COCO(str(out))  # pycocotools reads it, and its masks are ours
    for ann in gt.loadAnns(gt.getAnnIds()):
        assert gt.annToMask(ann).sum() == ann["area"]
    masks, labels, _ = ds.masks(1)
    assert masks.shape == (2, H, W) and labels.tolist() == [1, 1]
    assert masks[1].sum() == 6 * 5  # rectangle (10,10)-(15,14), inclusive


def test_convert_images_outside_the_output_folder_are_absolute(labelme_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "ann.json"
    extracted = tmp_path / "extracted"
    assert main(["convert", str(labelme_dir / "a.json"), str(labelme_dir / "b.json"), "-o", str(out),
                 "--images-out", str(extracted)]) == 0  # fmt: skip
    names = [im["file_name"] for im in json.loads(out.read_text())["images"]]
    assert names == [str(labelme_dir / "a.png"), str(extracted / "b.png")]
    # issue 31: no --images suggestion for a folder the names are not relative to
    assert "file names: 2 absolute (outside that folder);" in capsys.readouterr().out
    ds = load_coco(out)
    assert ds.image_path(2) == extracted / "b.png"


def test_convert_mask_folders_with_class_name(mask_root, tmp_path, capsys):
    out = tmp_path / "data" / "dsb.json"
    assert (
        main(["convert", str(mask_root), "-o", str(out), "--format", "masks", "--class-name", "needle"]) == 0
    )
    assert "2 image(s), 2 instance(s), 1 class(es) (needle)" in capsys.readouterr().out
    ds = load_coco(out)
    assert [im.file_name for im in ds.images] == ["dsb/s1/images/s1.png", "dsb/s2/images/s2.png"]
    assert ds.masks(2)[0].sum() == 17 * 14


def test_convert_merges_inputs_by_category_name(coco_file, mask_root, labelme_dir, tmp_path):
    out = tmp_path / "data" / "all.json"
    ds = convert([coco_file, mask_root, labelme_dir], out)
    assert ds.source == out and ds.images_dir == out.parent
    assert ds.class_names == ("precipitate", "crystal")  # the COCO input keeps its ids
    assert [im.id for im in ds.images] == [1, 2, 3, 4, 5]
    assert [im.file_name for im in ds.images] == [
        "coco/c.png",
        "dsb/s1/images/s1.png",
        "dsb/s2/images/s2.png",
        "labelme/a.png",
        "all_images/b.png",
    ]
    ids = [ann["id"] for image in ds.images for ann in ds.annotations(image.id)]
    assert sorted(ids) == list(range(1, 8))
    assert ds.masks(2)[1].tolist() == [2]  # mask folders' "crystal" is category 2 here
    assert load_coco(out).to_dict() == ds.to_dict()


def test_convert_a_coco_file_keeps_ids_and_rebases_file_names(coco_file, tmp_path):
    out = tmp_path / "out.json"
    ds = convert([coco_file], out)
    assert ds.images[0].file_name == "data/coco/c.png"
    assert ds.class_names == ("precipitate", "crystal")
    before = load_coco(coco_file)
    np.testing.assert_array_equal(ds.masks(1)[0], before.masks(1)[0])


def test_convert_reports_missing_images(coco_file, tmp_path):
    (coco_file.parent / "c.png").unlink()
    with pytest.raises(InvalidDataset, match=r"images\[0\].file_name: image file .*c.png not found") as info:
        convert([coco_file], tmp_path / "out.json")
    assert info.value.path == str(coco_file)


def test_convert_cli_errors_are_one_line(labelme_dir, tmp_path, capsys):
    bad = _labelme(tmp_path / "bad" / "x.json", [("crystal", "polygon", [[1, 1], [2, 2]])], "x.png")
    out = tmp_path / "out.json"
    assert main(["convert", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err and "shapes[0].points" in err
    assert not out.exists()
    assert main(["convert", str(labelme_dir / "a.json"), "-o", str(out), "--format", "coco"]) == 1
    err = capsys.readouterr().err.strip()
    assert "images: missing" in err and str(labelme_dir / "a.json") in err
    assert main(["convert", str(tmp_path / "absent"), "-o", str(out)]) == 1
    assert "file or folder not found" in capsys.readouterr().err
