"""Tests for crystal_rt.data.labelme: shapes, rasterisation, group_id, embedded images, errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.data.labelme import labelme_to_coco, read_labelme
from crystal_rt.errors import InvalidDataset
from crystal_rt.io.decode import read_image

H, W = 12, 16


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _image(height: int = H, width: int = W) -> np.ndarray:
    return (np.arange(height * width, dtype=np.uint32).reshape(height, width) % 251).astype(np.uint8)


def _shape(points, shape_type="polygon", label="crystal", group_id=None, **extra) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "shape_type": shape_type,
        "flags": {},
        **extra,
    }


def _write(
    path: Path, shapes: list, *, image: str | None = None, data: bytes | None = None, size=(H, W), **extra
):
    doc = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image,
        "imageData": None if data is None else base64.b64encode(data).decode("ascii"),
        "imageHeight": None if size is None else size[0],
        "imageWidth": None if size is None else size[1],
        **extra,
    }
    path.write_text(json.dumps(doc))
    return path


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Inclusive pixel box."""
    mask = np.zeros((H, W), bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


RECT = [[2, 2], [7, 2], [7, 5], [2, 5]]


def test_polygon_rectangle_and_circle(tmp_path):
    path = _write(
        tmp_path / "a.json",
        [
            _shape(RECT),
            _shape(
                [[7.4, 5.2], [2.6, 2.4]], "rectangle"
            ),  # opposite corners, any order; the pixels they are in
            _shape([[8, 6], [8, 9]], "circle", label="precipitate"),
        ],
        image="a.png",
    )
    lf = read_labelme(path)
    assert (lf.width, lf.height, lf.skipped) == (W, H, 0)
    assert lf.image_path == tmp_path / "a.png" and lf.image_bytes is None
    assert [label for label, _ in lf.instances] == ["crystal", "crystal", "precipitate"]
    polygon, rectangle, circle = (mask for _, mask in lf.instances)
    assert polygon.dtype == bool and polygon.shape == (H, W)
    np.testing.assert_array_equal(polygon, _box(2, 2, 7, 5))  # outline pixels are inside
    np.testing.assert_array_equal(rectangle, _box(2, 2, 7, 5))
    yy, xx = np.mgrid[0:H, 0:W]
    np.testing.assert_array_equal(circle, (xx - 8) ** 2 + (yy - 6) ** 2 <= 3.5**2)  # radius 3 + 0.5
    assert circle.sum() == 37
    assert circle[6, 8] and circle[9, 8] and circle[6, 11] and not circle[10, 8]


def test_legacy_file_without_shape_type_and_size_from_embedded_image(tmp_path):
    legacy = {"label": "crystal", "points": RECT, "line_color": None, "fill_color": None}
    no_type = {"label": "crystal", "points": [[9, 1], [14, 1], [14, 3]], "shape_type": None}
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps(
            {
                "shapes": [legacy, no_type],
                "imagePath": "",
                "imageData": base64.b64encode(_png(_image(H, W))).decode(),
            }
        )
    )
    lf = read_labelme(path)
    assert (lf.height, lf.width) == (H, W)
    assert lf.image_path is None and lf.image_bytes is not None
    np.testing.assert_array_equal(read_image(lf.image_bytes), _image())
    assert len(lf.instances) == 2
    np.testing.assert_array_equal(lf.instances[0][1], _box(2, 2, 7, 5))
    assert lf.instances[1][1][1, 9:15].all()


def test_size_from_the_image_file_and_windows_image_path(tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "x.png"), _image(20, 30))
    (tmp_path / "ann").mkdir()
    path = _write(tmp_path / "ann" / "x.json", [_shape(RECT)], image="..\\imgs\\x.png", size=None)
    lf = read_labelme(path)
    assert (lf.height, lf.width) == (20, 30)
    assert lf.image_path == tmp_path / "ann" / "../imgs/x.png"
    assert lf.instances[0][1].shape == (20, 30)


def test_group_id_merges_same_label_only(tmp_path):
    shapes = [
        _shape([[1, 1], [3, 1], [3, 3], [1, 3]], group_id=1),
        _shape([[10, 6], [12, 6], [12, 8], [10, 8]], group_id=1),
        _shape([[5, 8], [6, 8], [6, 9], [5, 9]], label="precipitate", group_id=1),
        _shape([[1, 9], [2, 9], [2, 10], [1, 10]]),
        _shape([[4, 9], [5, 9], [5, 10], [4, 10]]),
    ]
    lf = read_labelme(_write(tmp_path / "g.json", shapes, image="g.png"))
    assert [label for label, _ in lf.instances] == ["crystal", "precipitate", "crystal", "crystal"]
    np.testing.assert_array_equal(lf.instances[0][1], _box(1, 1, 3, 3) | _box(10, 6, 12, 8))
    assert lf.instances[2][1].sum() == lf.instances[3][1].sum() == 4


def test_shapes_without_area_are_skipped(tmp_path):
    shapes = [
        _shape([[1, 1], [5, 5]], "line"),
        _shape([[1, 1], [5, 5], [9, 1]], "linestrip"),
        _shape([[3, 3]], "point"),
        _shape([[-8, -8], [-2, -8], [-2, -2]]),  # entirely outside the image
        _shape(RECT),
    ]
    lf = read_labelme(_write(tmp_path / "s.json", shapes, image="s.png"))
    assert lf.skipped == 4
    assert len(lf.instances) == 1


def test_mask_shape_is_pasted_at_its_box(tmp_path):
    crop = np.zeros((3, 4), np.uint8)
    crop[0, :] = 1
    crop[:, 3] = 255
    shape = _shape([[2, 1], [5, 3]], "mask", mask=base64.b64encode(_png(crop)).decode())
    outside = _shape(
        [[14, 10], [17, 12]], "mask", mask=base64.b64encode(_png(np.ones((3, 4), np.uint8))).decode()
    )
    lf = read_labelme(_write(tmp_path / "m.json", [shape, outside], image="m.png"))
    expected = np.zeros((H, W), bool)
    expected[1:4, 2:6] = crop > 0
    np.testing.assert_array_equal(lf.instances[0][1], expected)
    np.testing.assert_array_equal(lf.instances[1][1], _box(14, 10, 15, 11))  # clipped to the image


_DEL = object()

ERRORS = [
    ([_shape(RECT), _shape(RECT), _shape({"x": 1})], {}, "shapes[2].points: expected a list of [x, y] pairs"),
    ([_shape([[1, 1], [2], [3, 3]])], {}, "shapes[0].points[1]: expected an [x, y] pair"),
    ([_shape([[1, 1], [2, "y"], [3, 3]])], {}, "shapes[0].points[1][1]: expected a number"),
    ([_shape([[1, 1], [1e9, 2], [3, 3]])], {}, "shapes[0].points[1]: (1000000000.0, 2.0) is far outside"),
    ([_shape([[1, 1], [2, 2]])], {}, "shapes[0].points: a polygon needs at least 3 points, got 2"),
    ([_shape([[1, 1], [2, 2], [3, 3]], "circle")], {}, "shapes[0].points: a circle needs 2 points, got 3"),
    ([_shape([[1, 1]], "rectangle")], {}, "shapes[0].points: a rectangle needs at least 2 points"),
    ([_shape(RECT, "cuboid")], {}, "shapes[0].shape_type: unsupported shape type 'cuboid'"),
    ([_shape(RECT, 3)], {}, "shapes[0].shape_type: expected a string"),
    ([_shape(RECT, label="")], {}, "shapes[0].label: expected a non-empty string"),
    ([{"points": RECT}], {}, "shapes[0].label: missing"),
    ([{"label": "crystal"}], {}, "shapes[0].points: missing"),
    ([_shape(RECT, group_id="a")], {}, "shapes[0].group_id: expected an integer"),
    (["polygon"], {}, "shapes[0]: expected an object"),
    ([_shape([[1, 1], [3, 3]], "mask")], {}, "shapes[0].mask: expected a base64 PNG string"),
    ([_shape([[1, 1], [3, 3]], "mask", mask="!!!")], {}, "shapes[0].mask: not valid base64"),
    ([_shape([[1, 1], [3, 3]], "mask", mask="aGVsbG8=")], {}, "shapes[0].mask: cannot decode the image"),
    (
        [_shape([[1, 1], [3, 3]], "mask", mask=base64.b64encode(_png(np.ones((2, 2), np.uint8))).decode())],
        {},
        "shapes[0].mask: the mask image is 2x2 but the points give a 3x3 box",
    ),
    (None, {"imageHeight": "12"}, "imageHeight: expected an integer"),
    (None, {"imageWidth": None}, "imageWidth: expected an integer"),
    (None, {"imageHeight": None, "imageWidth": None}, "imageHeight: missing, and there is no imageData"),
    (None, {"imageData": "####"}, "imageData: not valid base64"),
    (None, {"imageData": base64.b64encode(b"not an image").decode()}, "imageData: cannot decode the image"),
    (None, {"imageData": base64.b64encode(_png(_image(5, 5))).decode()}, "imageHeight x imageWidth is 12x16"),
    (None, {"imagePath": 3}, "imagePath: expected a string"),
    (None, {"shapes": {}}, "shapes: expected a list"),
    (None, {"shapes": _DEL}, "shapes: missing"),
]


@pytest.mark.parametrize(("shapes", "fields", "expected"), ERRORS, ids=[e[2][:50] for e in ERRORS])
def test_malformed_fields_name_file_and_field(tmp_path, shapes, fields, expected):
    doc = {
        "shapes": shapes if shapes is not None else [_shape(RECT)],
        "imagePath": "x.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    doc.update(fields)
    doc = {k: v for k, v in doc.items() if v is not _DEL}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidDataset) as info:
        read_labelme(path)
    assert info.value.path == str(path)
    assert expected in info.value.message, info.value.message


def test_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(InvalidDataset, match="expected a Labelme JSON object"):
        read_labelme(path)


def test_labelme_to_coco_with_files_and_embedded_images(tmp_path):
    src = tmp_path / "labelme"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), _image())
    _write(
        src / "a.json", [_shape(RECT, label="precipitate"), _shape([[9, 1], [14, 1], [14, 3]])], image="a.png"
    )
    _write(
        src / "b.json",
        [
            _shape(RECT, group_id=4),
            _shape([[9, 8], [12, 8], [12, 10]], group_id=4),
            _shape([[1, 1], [1, 4]], "line"),
        ],
        image="missing.png",
        data=_png(_image(H, W)),
    )
    jpeg = cv2.imencode(".jpg", _image())[1].tobytes()
    _write(src / "c.json", [], image=None, data=jpeg)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "extracted"
    ds = labelme_to_coco([src], out)
    assert ds.class_names == ("crystal", "precipitate")  # sorted by name
    assert ds.images_dir == tmp_path
    assert [im.file_name for im in ds.images] == ["labelme/a.png", "extracted/b.png", "extracted/c.jpg"]
    assert (out / "c.jpg").read_bytes() == jpeg
    np.testing.assert_array_equal(read_image(ds.image_path(2)), _image())
    masks, labels, crowd = ds.masks(1)
    assert labels.tolist() == [2, 1] and not crowd.any()
    np.testing.assert_array_equal(masks[0], _box(2, 2, 7, 5))
    masks, labels, _ = ds.masks(2)
    assert masks.shape == (1, H, W) and labels.tolist() == [1]  # two shapes of one group
    assert ds.masks(3)[0].shape == (0, H, W)
    again = read_labelme(src / "b.json").instances[0][1]
    np.testing.assert_array_equal(masks[0], again)


def test_labelme_to_coco_needs_an_image(tmp_path):
    path = _write(tmp_path / "x.json", [_shape(RECT)], image="gone.png")
    with pytest.raises(InvalidDataset, match=r"imagePath: image file .*gone\.png not found") as info:
        labelme_to_coco([path], tmp_path / "out")
    assert info.value.path == str(path)
    embedded = _write(tmp_path / "y.json", [_shape(RECT)], image="gone.png", data=_png(_image()))
    with pytest.raises(InvalidDataset, match="--images-out"):
        labelme_to_coco([embedded], None)


def test_labelme_to_coco_checks_the_image_size(tmp_path):
    cv2.imwrite(str(tmp_path / "small.png"), _image(5, 6))
    path = _write(tmp_path / "small.json", [_shape(RECT)], image="small.png")
    with pytest.raises(InvalidDataset, match=r"imageHeight: .* is 5x6"):
        labelme_to_coco([path], None)


def test_labelme_to_coco_empty_folder(tmp_path):
    with pytest.raises(InvalidDataset, match=r"no Labelme \.json files"):
        labelme_to_coco([tmp_path], None)
    with pytest.raises(InvalidDataset, match="file not found"):
        labelme_to_coco([tmp_path / "nope.json"], None)
