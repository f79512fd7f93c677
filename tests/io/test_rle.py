"""Tests for crystal_rt.results.rle: crop-local RLE equals pycocotools' encoding of the full mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from crystal_rt.results.detection import InstanceMask
from crystal_rt.results.rle import crop_to_rle, rle_to_mask

# pycocotools' decode trips a NumPy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _full(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=np.uint8)
    h, w = crop.shape
    full[y0 : y0 + h, x0 : x0 + w] = crop
    return full


def _coco(full: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _check(crop: np.ndarray, x0: int, y0: int, height: int, width: int, *, counts: bool = True) -> None:
    """Decoded mask, area and (with ``counts``) the compressed counts string equal pycocotools'."""
    crop = np.asarray(crop, dtype=bool)
    full = _full(crop, x0, y0, height, width)
    ours = crop_to_rle(crop, x0, y0, height, width)
    ref = _coco(full)
    where = f"crop {crop.shape} at ({x0}, {y0}) in {height}x{width}"
    assert ours["size"] == [height, width]
    assert isinstance(ours["counts"], str)
    decoded = rle_to_mask(ours)
    assert decoded.dtype == bool
    assert decoded.shape == (height, width)
    np.testing.assert_array_equal(decoded, full.astype(bool), err_msg=where)
    # pycocotools agrees on the area too.
    assert int(mask_utils.area({"size": ours["size"], "counts": ours["counts"].encode()})) == int(full.sum())
    if counts:
        assert ours["counts"] == ref["counts"], where


def _sets_last_pixel(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> bool:
    h, w = crop.shape
    return h > 0 and w > 0 and y0 + h == height and x0 + w == width and bool(crop[-1, -1])


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, int, int, int, int]:
    height, width = (int(v) for v in rng.integers(1, 60, size=2))
    h = int(rng.integers(0, height + 1))
    w = int(rng.integers(0, width + 1))
    # Bias placements towards the four edges.
    choice = rng.integers(0, 3, size=2)
    y0 = (0, height - h, int(rng.integers(0, height - h + 1)))[choice[0]]
    x0 = (0, width - w, int(rng.integers(0, width - w + 1)))[choice[1]]
    density = rng.choice([0.05, 0.5, 0.95, 1.0])
    crop = rng.random((h, w)) < density
    return crop, x0, y0, height, width


def test_random_crops_match_pycocotools() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(600):
        crop, x0, y0, height, width = _random_case(rng)
        _check(crop, x0, y0, height, width)


def test_random_crops_with_last_pixel_decode_correctly() -> None:
    """Masks that include the image's bottom-right pixel decode to the right mask."""
    rng = np.random.default_rng(4321)
    done = 0
    while done < 150:
        crop, x0, y0, height, width = _random_case(rng)
        if crop.size == 0:
            continue
        crop = np.pad(crop, ((0, height - y0 - crop.shape[0]), (0, width - x0 - crop.shape[1])))
        crop[-1, -1] = True
        _check(crop, x0, y0, height, width)
        done += 1


LAST_PIXEL_CASES = [
    # (height, width, x0, y0, crop)
    (1, 1, 0, 0, np.ones((1, 1), bool)),
    (40, 50, 0, 0, np.ones((40, 50), bool)),
    (40, 50, 38, 30, np.ones((10, 12), bool)),
    (7, 9, 8, 6, np.ones((1, 1), bool)),
    (7, 9, 0, 0, np.eye(7, 9, k=2, dtype=bool)),
    (30, 1, 0, 10, np.ones((20, 1), bool)),
]


@pytest.mark.parametrize(("height", "width", "x0", "y0", "crop"), LAST_PIXEL_CASES)
def test_last_image_pixel_counts(height: int, width: int, x0: int, y0: int, crop: np.ndarray) -> None:
    assert crop_to_rle(crop, x0, y0, height, width) == _coco(_full(crop, x0, y0, height, width))


@pytest.mark.parametrize(("height", "width", "x0", "y0", "crop"), LAST_PIXEL_CASES)
def test_last_image_pixel_decodes(height: int, width: int, x0: int, y0: int, crop: np.ndarray) -> None:
    assert _sets_last_pixel(crop, x0, y0, height, width)  # the cases above really hold that pixel
    _check(crop, x0, y0, height, width)


@pytest.mark.parametrize(
    ("height", "width", "x0", "y0", "h", "w"),
    [
        (40, 50, 0, 0, 10, 12),  # top-left corner
        (40, 50, 38, 0, 10, 12),  # top-right corner
        (40, 50, 0, 30, 10, 12),  # bottom-left corner
        (40, 50, 38, 30, 10, 12),  # bottom-right corner
        (40, 50, 0, 0, 40, 50),  # the whole image
        (40, 50, 0, 5, 40, 50),  # h clipped to 35 rows by the test
        (40, 50, 17, 0, 1, 1),
        (40, 50, 0, 0, 1, 1),
        (40, 50, 49, 39, 1, 1),
        (1, 1, 0, 0, 1, 1),
        (1, 30, 4, 0, 1, 20),
        (30, 1, 0, 4, 20, 1),
        (40, 50, 10, 0, 40, 1),  # a full-height column
        (40, 50, 0, 10, 1, 50),  # a full-width row
    ],
)
@pytest.mark.parametrize("fill", ["ones", "random", "first", "last", "first_last", "border"])
def test_edge_crops(height: int, width: int, x0: int, y0: int, h: int, w: int, fill: str) -> None:
    h = min(h, height - y0)
    w = min(w, width - x0)
    rng = np.random.default_rng(height * 100 + x0 * 7 + y0)
    if fill == "ones":
        crop = np.ones((h, w), dtype=bool)
    elif fill == "random":
        crop = rng.random((h, w)) < 0.5
    else:
        crop = np.zeros((h, w), dtype=bool)
        if fill in ("first", "first_last"):
            crop[0, 0] = True
        if fill in ("last", "first_last"):
            crop[-1, -1] = True
        if fill == "border":
            crop[0, :] = crop[-1, :] = crop[:, 0] = crop[:, -1] = True
    # Counts of masks holding the image's last pixel: see test_last_image_pixel_counts.
    _check(crop, x0, y0, height, width, counts=True)


def test_first_and_last_image_pixel() -> None:
    full = np.zeros((7, 9), dtype=bool)
    full[0, 0] = True
    _check(full, 0, 0, 7, 9)
    _check(np.ones((1, 1), dtype=bool), 0, 0, 7, 9)  # first pixel only
    _check(np.ones((1, 1), dtype=bool), 8, 5, 7, 9)  # last column, one above the last pixel
    _check(np.ones((1, 1), dtype=bool), 7, 6, 7, 9)  # last row, one left of the last pixel
    full[-1, -1] = True
    _check(full, 0, 0, 7, 9)
    # Column-major order: the pixel below the first one is the second in the RLE.
    assert crop_to_rle(np.ones((1, 1), bool), 0, 1, 7, 9) == _coco(_full(np.ones((1, 1)), 0, 1, 7, 9))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (4, 6)])
def test_empty_crop(shape: tuple[int, int]) -> None:
    crop = np.zeros(shape, dtype=bool)
    rle = crop_to_rle(crop, 3, 2, 20, 30)
    assert rle == _coco(np.zeros((20, 30), dtype=np.uint8))
    assert not rle_to_mask(rle).any()
    assert rle_to_mask(rle).shape == (20, 30)


def test_counts_string_is_json_safe_text() -> None:
    rng = np.random.default_rng(3)
    rle = crop_to_rle(rng.random((30, 40)) < 0.5, 5, 6, 50, 60)
    assert isinstance(rle["counts"], str)
    assert rle["counts"].isascii()
    assert isinstance(rle["size"][0], int)


def test_rle_to_mask_accepts_bytes_and_str() -> None:
    full = np.zeros((12, 15), dtype=np.uint8)
    full[3:8, 4:11] = 1
    rle = mask_utils.encode(np.asfortranarray(full))
    as_bytes = {"size": list(rle["size"]), "counts": rle["counts"]}
    as_str = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    np.testing.assert_array_equal(rle_to_mask(as_bytes), full.astype(bool))
    np.testing.assert_array_equal(rle_to_mask(as_str), full.astype(bool))


def test_round_trip_full_masks() -> None:
    rng = np.random.default_rng(17)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        full = rng.random((height, width)) < rng.uniform(0, 1)
        rle = crop_to_rle(full, 0, 0, height, width)
        np.testing.assert_array_equal(rle_to_mask(rle), full)


def test_instance_mask_to_rle_and_area() -> None:
    rng = np.random.default_rng(8)
    crop = rng.random((13, 21)) < 0.4
    crop[0, 0] = True
    inst = InstanceMask(crop, 30, 11, 64, 80)
    full = _full(crop, 30, 11, 64, 80)
    assert inst.area == int(crop.sum())
    assert inst.area == int(full.sum())
    assert isinstance(inst.area, int)
    assert inst.to_rle() == _coco(full)
    np.testing.assert_array_equal(rle_to_mask(inst.to_rle()), full.astype(bool))
    np.testing.assert_array_equal(inst.to_full(), full.astype(bool))


def test_instance_mask_empty() -> None:
    inst = InstanceMask(np.zeros((0, 0), dtype=bool), 0, 0, 10, 12)
    assert inst.area == 0
    assert inst.to_rle() == _coco(np.zeros((10, 12), dtype=np.uint8))
    assert not inst.to_full().any()
