"""Tests for crystal_rt.data.coco: validation, masks, contiguous labels, round trips, pycocotools."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from crystal_rt.data.builder import CocoBuilder
from crystal_rt.data.coco import Category, CocoDataset, ImageRecord, load_coco
from crystal_rt.errors import InvalidDataset
from crystal_rt.results.rle import rle_string_counts

# pycocotools' decode trips a NumPy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.uint8)  # column-major
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return {"size": list(mask.shape), "counts": runs}


def _blob(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def coco_dict() -> dict:
    """Two images, two categories; a polygon, a compressed RLE and an uncompressed crowd RLE."""
    return {
        "info": {"description": "test"},
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 10},
            {"id": 2, "file_name": "sub/b.png", "width": 8, "height": 6},
        ],
        "categories": [{"id": 1, "name": "crystal"}, {"id": 2, "name": "precipitate"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": _rle(_blob(6, 8, (1, 1, 4, 5)))},
            {
                "id": 3,
                "image_id": 2,
                "category_id": 1,
                "segmentation": _uncompressed(_blob(6, 8, (5, 0, 8, 2))),
                "iscrowd": 1,
            },
        ],
    }


def test_from_dict_fills_bbox_area_and_iscrowd(coco_dict):
    ds = CocoDataset.from_dict(coco_dict)
    assert len(ds) == 2
    assert ds.images[1] == ImageRecord(2, "sub/b.png", 8, 6)
    assert ds.categories == [Category(1, "crystal"), Category(2, "precipitate")]
    (poly,) = ds.annotations(1)
    assert poly["bbox"] == [2.0, 2.0, 10.0, 6.0]
    assert poly["area"] == 60.0  # pycocotools' convention: (2,2)-(12,8) covers 10 x 6 pixels
    assert poly["iscrowd"] == 0
    rle, crowd = ds.annotations(2)
    assert rle["bbox"] == [1.0, 1.0, 3.0, 4.0] and rle["area"] == 12.0
    assert crowd["iscrowd"] == 1


def test_masks_polygon_compressed_and_uncompressed_rle(coco_dict):
    ds = CocoDataset.from_dict(coco_dict)
    masks, labels, crowd = ds.masks(1)
    assert masks.shape == (1, 10, 20) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], _blob(10, 20, (2, 2, 12, 8)))
    assert labels.tolist() == [1] and labels.dtype == np.int64
    assert crowd.tolist() == [False]
    masks, labels, crowd = ds.masks(2)
    np.testing.assert_array_equal(masks[0], _blob(6, 8, (1, 1, 4, 5)))
    np.testing.assert_array_equal(masks[1], _blob(6, 8, (5, 0, 8, 2)))
    assert labels.tolist() == [2, 1]
    assert crowd.tolist() == [False, True]


def test_rle_counts_as_bytes_are_accepted_and_stored_as_str(coco_dict):
    seg = coco_dict["annotations"][1]["segmentation"]
    seg["counts"] = seg["counts"].encode("ascii")
    ds = CocoDataset.from_dict(coco_dict)
    assert isinstance(ds.to_dict()["annotations"][1]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(ds.masks(2)[0][0], _blob(6, 8, (1, 1, 4, 5)))


def test_masks_of_an_image_without_annotations():
    ds = CocoDataset.from_dict(
        {
            "images": [{"id": 5, "file_name": "x.png", "width": 7, "height": 3}],
            "annotations": [],
            "categories": [{"id": 1, "name": "crystal"}],
        }
    )
    masks, labels, crowd = ds.masks(5)
    assert masks.shape == (0, 3, 7) and labels.shape == (0,) and crowd.shape == (0,)
    assert labels.dtype == np.int64 and crowd.dtype == bool
    assert ds.annotations(5) == []


def test_labels_are_contiguous_in_category_id_order():
    mask = _blob(4, 4, (0, 0, 2, 2))
    ds = CocoDataset.from_dict(
        {
            "images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 7, "segmentation": _rle(mask)},
                {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _rle(mask)},
            ],
            "categories": [{"id": 7, "name": "precipitate"}, {"id": 3, "name": "crystal"}],
        }
    )
    assert ds.class_names == ("crystal", "precipitate")
    assert ds.label_of(3) == 1 and ds.label_of(7) == 2
    assert ds.masks(1)[1].tolist() == [2, 1]
    with pytest.raises(KeyError):
        ds.label_of(4)


def test_builder_write_load_round_trip(tmp_path):
    builder = CocoBuilder()
    assert builder.category_id("crystal") == 1
    first = builder.add_image("one.png", 40, 30)
    second = builder.add_image("two.png", 16, 16)
    assert (first, second) == (1, 2)
    circle = np.zeros((30, 40), np.uint8)
    cv2.circle(circle, (20, 15), 8, 1, -1)
    holed = _blob(30, 40, (2, 2, 12, 12))
    holed[5:8, 5:8] = False
    assert builder.add_mask(first, circle.astype(bool)) == 1
    assert builder.add_mask(first, holed, "precipitate") == 2
    assert builder.add_mask(first, np.zeros((30, 40), bool)) is None
    assert builder.add_polygons(second, [[1, 1, 9, 1, 9, 9, 1, 9]], "crystal") == 3
    assert builder.add_polygons(second, [[1, 1, 5, 1, 9, 1]], "crystal") is None  # no area
    assert builder.category_id("precipitate") == 2
    built = builder.build(images_dir=tmp_path)
    path = built.write(tmp_path / "out" / "train.json")
    assert path.read_text().count("\n") == 1  # compact
    loaded = load_coco(path)
    assert loaded.source == path and loaded.images_dir == path.parent
    assert loaded.image_path(1) == tmp_path / "out" / "one.png"
    assert loaded.class_names == ("crystal", "precipitate")
    for image in built.images:
        for a, b in zip(built.masks(image.id), loaded.masks(image.id), strict=True):
            np.testing.assert_array_equal(a, b)
    masks, labels, _ = loaded.masks(1)
    np.testing.assert_array_equal(masks[0], circle.astype(bool))
    np.testing.assert_array_equal(masks[1], holed)
    assert labels.tolist() == [1, 2]
    assert loaded.masks(2)[0][0].sum() == 64
    assert load_coco(path, images_dir=tmp_path).image_path(2) == tmp_path / "two.png"


def test_pycocotools_loads_the_written_json(coco_dict, tmp_path):
    ds = CocoDataset.from_dict(coco_dict)
    path = ds.write(tmp_path / "gt.json")
    gt = COCO(str(path))
    assert sorted(gt.getImgIds()) == [1, 2] and sorted(gt.getCatIds()) == [1, 2]
    for image in ds.images:
        masks, _, _ = ds.masks(image.id)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image.id]))
        for mask, ann in zip(masks, anns, strict=True):
            np.testing.assert_array_equal(gt.annToMask(ann).astype(bool), mask)
    results = [{**ann, "score": 0.9} for ann in json.loads(path.read_text())["annotations"]]
    for res in results:
        if isinstance(res["segmentation"], dict) and isinstance(res["segmentation"]["counts"], list):
            res["segmentation"] = _rle(gt.annToMask(res).astype(bool))  # loadRes wants compressed RLE
    assert len(gt.loadRes(results).anns) == 3


def test_info_is_kept(coco_dict):
    assert CocoDataset.from_dict(coco_dict).to_dict()["info"] == {"description": "test"}


def test_image_path_needs_an_images_dir(coco_dict):
    ds = CocoDataset.from_dict(coco_dict)
    with pytest.raises(InvalidDataset, match="no images folder"):
        ds.image_path(1)
    with pytest.raises(KeyError):
        ds.masks(99)


def _set(path: str, value):
    """A mutation: set a dotted/indexed path (e.g. 'annotations.0.bbox') to value (or delete)."""

    def apply(data: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = data
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return apply


_DELETE = object()

ERROR_CASES = [
    ("images", _DELETE, "images: missing"),
    ("categories", {"id": 1}, "categories: expected a list"),
    ("images.1.id", 1, "images[1].id: duplicate image id 1"),
    ("images.1.width", "8", "images[1].width: expected an integer"),
    ("images.0.height", 0, "images[0].height: expected an integer >= 1"),
    ("images.0.file_name", "", "images[0].file_name: expected a non-empty string"),
    ("images.0", [1], "images[0]: expected an object"),
    ("categories.1.id", 1, "categories[1].id: duplicate category id"),
    ("categories.1.name", "crystal", "categories[1].name: duplicate category name"),
    ("categories.0.name", None, "categories[0].name: expected a non-empty string"),
    ("annotations.2.id", 1, "annotations[2].id: duplicate annotation id"),
    ("annotations.0.image_id", 9, "annotations[0].image_id: no image with id 9"),
    ("annotations.0.category_id", 5, "annotations[0].category_id: no category with id 5"),
    ("annotations.0.category_id", True, "annotations[0].category_id: expected an integer"),
    ("annotations.0.segmentation", _DELETE, "annotations[0].segmentation: missing"),
    ("annotations.0.segmentation", "abc", "annotations[0].segmentation: expected polygons"),
    ("annotations.0.segmentation", [], "annotations[0].segmentation: expected at least one polygon"),
    ("annotations.0.segmentation", [[1, 2, 3, 4, 5]], "annotations[0].segmentation[0]: expected an even"),
    ("annotations.0.segmentation", [[1, 2, 3, 4]], "annotations[0].segmentation[0]: expected an even"),
    (
        "annotations.0.segmentation",
        [[1, 2, "x", 4, 5, 6]],
        "annotations[0].segmentation[0][2]: expected a num",
    ),
    (
        "annotations.0.segmentation",
        [[1, 2, 3, 4, 5, 6], 7],
        "annotations[0].segmentation[1]: expected a flat",
    ),
    ("annotations.0.segmentation", [[1, 2, 3, 4, 1e9, 6]], "annotations[0].segmentation[0][4]: coordinate"),
    ("annotations.1.segmentation.size", [8, 6], "annotations[1].segmentation.size: expected the image's"),
    ("annotations.1.segmentation.counts", "abc", "annotations[1].segmentation.counts: not a valid"),
    ("annotations.1.segmentation.counts", "é", "annotations[1].segmentation.counts: not a valid"),
    ("annotations.1.segmentation.counts", 12, "annotations[1].segmentation.counts: expected a compressed"),
    ("annotations.1.segmentation.counts", "05", "annotations[1].segmentation.counts: run lengths add up"),
    ("annotations.2.segmentation.counts", [40, 10], "annotations[2].segmentation.counts: run lengths add up"),
    ("annotations.2.segmentation.counts", [40, -1, 9], "annotations[2].segmentation.counts[1]: expected an"),
    ("annotations.2.segmentation", {"counts": [48]}, "annotations[2].segmentation.size: missing"),
    ("annotations.0.bbox", [1, 2, 3], "annotations[0].bbox: expected [x, y, width, height]"),
    ("annotations.0.bbox", [1, 2, -3, 4], "annotations[0].bbox: width and height must not be negative"),
    ("annotations.0.bbox", [1, 2, float("nan"), 4], "annotations[0].bbox[2]: expected a finite number"),
    ("annotations.0.area", -1, "annotations[0].area: expected a number >= 0"),
    ("annotations.0.iscrowd", 2, "annotations[0].iscrowd: expected 0 or 1"),
]


@pytest.mark.parametrize(("where", "value", "expected"), ERROR_CASES, ids=[c[2][:48] for c in ERROR_CASES])
def test_malformed_fields_name_file_and_field(coco_dict, tmp_path, where, value, expected):
    data = copy.deepcopy(coco_dict)
    _set(where, value)(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidDataset) as info:
        load_coco(path)
    assert info.value.path == str(path)
    assert expected in info.value.message
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not a UTF-8 JSON file"),
        (b"[1, 2]", "expected a JSON object with images, annotations and categories"),
    ],
)
def test_unreadable_files(tmp_path, content, expected):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(InvalidDataset, match=expected) as info:
        load_coco(path)
    assert info.value.path == str(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InvalidDataset, match="file not found"):
        load_coco(tmp_path / "absent.json")
    with pytest.raises(InvalidDataset, match="is a folder"):
        load_coco(tmp_path)


def test_utf8_bom_is_accepted(coco_dict, tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(coco_dict).encode())
    assert len(load_coco(path)) == 2


def test_rle_string_counts_matches_pycocotools():
    rng = np.random.default_rng(1)
    for height, width in [(1, 1), (5, 9), (64, 48), (300, 7)]:
        mask = rng.random((height, width)) < 0.3
        counts = rle_string_counts(_rle(mask)["counts"])
        assert counts is not None and counts.sum() == height * width
        assert counts.tolist() == _uncompressed(mask)["counts"]
    big = np.zeros((2000, 1500), bool)
    big[100:1900, 200:1300] = True
    assert rle_string_counts(_rle(big)["counts"]).tolist() == _uncompressed(big)["counts"]
    assert rle_string_counts("") is None
    assert rle_string_counts("a") is None  # continuation bit set on the last character
    assert rle_string_counts("~") is None  # out of the alphabet


def test_builder_rejects_bad_input():
    builder = CocoBuilder()
    image = builder.add_image("a.png", 4, 3)
    with pytest.raises(ValueError, match="mask shape"):
        builder.add_mask(image, np.ones((4, 3), bool))
    with pytest.raises(KeyError):
        builder.add_mask(7, np.ones((3, 4), bool))
    with pytest.raises(InvalidDataset, match=r"polygons\[0\]"):
        builder.add_polygons(image, [[1, 2, 3]], "crystal")
    with pytest.raises(InvalidDataset, match="width"):
        builder.add_image("b.png", 0, 3)
