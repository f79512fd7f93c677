"""Tests for crystal_rt.data.mask_folders: the NAME/images + NAME/masks (Matterport / DSB) layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.data.mask_folders import read_mask_folders
from crystal_rt.errors import InvalidDataset


def _sample(
    root: Path, name: str, shape=(24, 32), boxes=((2, 3, 10, 9), (12, 4, 30, 20))
) -> list[np.ndarray]:
    """Write ROOT/NAME/images/NAME.png and one mask PNG per box; return the masks."""
    (root / name / "images").mkdir(parents=True)
    image = np.full(shape, 90, np.uint8)
    cv2.imwrite(str(root / name / "images" / f"{name}.png"), image)
    masks = []
    if boxes:
        (root / name / "masks").mkdir()
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        mask = np.zeros(shape, np.uint8)
        mask[y0:y1, x0:x1] = 255
        cv2.imwrite(str(root / name / "masks" / f"m{k}.png"), mask)
        masks.append(mask > 0)
    return masks


def test_root_of_samples(tmp_path):
    first = _sample(tmp_path, "s1")
    second = _sample(tmp_path, "s2", shape=(16, 16), boxes=((1, 1, 5, 5),))
    _sample(tmp_path, "s3", boxes=())  # no masks folder: an image without instances
    (tmp_path / ".hidden").mkdir()
    ds = read_mask_folders(tmp_path)
    assert ds.images_dir == tmp_path
    assert [im.file_name for im in ds.images] == ["s1/images/s1.png", "s2/images/s2.png", "s3/images/s3.png"]
    assert [(im.height, im.width) for im in ds.images] == [(24, 32), (16, 16), (24, 32)]
    assert ds.class_names == ("crystal",)
    assert ds.image_path(2).is_file()
    for image_id, expected in ((1, first), (2, second)):
        masks, labels, crowd = ds.masks(image_id)
        np.testing.assert_array_equal(masks, np.stack(expected))
        assert labels.tolist() == [1] * len(expected) and not crowd.any()
    assert ds.masks(3)[0].shape == (0, 24, 32)


def test_single_sample_folder_and_class_name(tmp_path):
    _sample(tmp_path, "only")
    ds = read_mask_folders(tmp_path / "only", class_name="needle")
    assert ds.images_dir == tmp_path
    assert ds.images[0].file_name == "only/images/only.png"
    assert ds.class_names == ("needle",)
    assert len(ds.annotations(1)) == 2


def test_mask_size_mismatch_names_the_mask(tmp_path):
    _sample(tmp_path, "s1")
    bad = tmp_path / "s1" / "masks" / "wrong.png"
    cv2.imwrite(str(bad), np.full((10, 10), 255, np.uint8))
    with pytest.raises(InvalidDataset, match=r"mask is 10x10 but the image s1\.png is 24x32") as info:
        read_mask_folders(tmp_path)
    assert info.value.path == str(bad)


def test_empty_mask_names_the_mask(tmp_path):
    _sample(tmp_path, "s1")
    empty = tmp_path / "s1" / "masks" / "empty.png"
    cv2.imwrite(str(empty), np.zeros((24, 32), np.uint8))
    with pytest.raises(InvalidDataset, match="mask is empty") as info:
        read_mask_folders(tmp_path)
    assert info.value.path == str(empty)


def test_unreadable_mask_names_the_mask(tmp_path):
    _sample(tmp_path, "s1")
    broken = tmp_path / "s1" / "masks" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InvalidDataset) as info:
        read_mask_folders(tmp_path)
    assert info.value.path == str(broken)


def test_folder_without_images(tmp_path):
    _sample(tmp_path, "s1")
    (tmp_path / "stray" / "masks").mkdir(parents=True)
    with pytest.raises(InvalidDataset, match="no images/ folder") as info:
        read_mask_folders(tmp_path)
    assert info.value.path == str(tmp_path / "stray")


def test_images_folder_with_no_or_several_images(tmp_path):
    (tmp_path / "s1" / "images").mkdir(parents=True)
    with pytest.raises(InvalidDataset, match="found no image in images/"):
        read_mask_folders(tmp_path)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "s1" / "images" / name), np.zeros((4, 4), np.uint8))
    with pytest.raises(InvalidDataset, match="found 2 images in images/"):
        read_mask_folders(tmp_path)
    cv2.imwrite(str(tmp_path / "s1" / "images" / "s1.png"), np.zeros((4, 4), np.uint8))
    assert read_mask_folders(tmp_path).images[0].file_name == "s1/images/s1.png"  # NAME.png wins


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(InvalidDataset, match="folder not found"):
        read_mask_folders(tmp_path / "absent")
    with pytest.raises(InvalidDataset, match="no sample folders"):
        read_mask_folders(tmp_path)
