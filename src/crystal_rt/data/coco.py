"""The project's in-memory dataset: a validated COCO instance-segmentation dataset.

Every annotation source (a COCO JSON, Labelme files, Matterport / Kaggle DSB mask folders, the
synthetic generator) ends up as a :class:`CocoDataset`, which training and evaluation read.
:meth:`CocoDataset.from_dict` checks everything up front (required keys, types, unique ids,
references, segmentation geometry) so that a malformed file fails at load time with an
:class:`~crystal_rt.errors.InvalidDataset` naming the file and the field, e.g.
``annotations[12].segmentation[0]: expected an even number (>= 6) of coordinates, got 5``,
never halfway through a training run.

Segmentations are COCO polygons (a list of flat ``[x1, y1, x2, y2, ...]`` lists) or RLE, either
compressed (``counts`` a string, as pycocotools writes it) or uncompressed (``counts`` a list of
run lengths); RLE ``size`` must be the image's ``[height, width]``. Polygons are rasterised by
pycocotools, exactly as COCO evaluation does (a square with corners (0, 0) and (10, 10) covers
10 x 10 pixels). Compressed RLE strings are decoded and checked here (their runs must add up to
``height * width``) before pycocotools ever sees them, since its C decoder does not check bounds.

Model labels are contiguous: the category with the smallest id is label 1, the next one 2, and so
on (:meth:`CocoDataset.label_of`); 0 is the background.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import InvalidDataset
from ..io.writers import atomic_write_bytes
from ..results.rle import counts_to_mask, rle_string_counts
from .fields import FieldCheck, describe, read_json
from .segmentation import check_bbox, check_iscrowd, check_segmentation

__all__ = ["Category", "CocoDataset", "ImageRecord", "load_coco"]

_TOP_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass(frozen=True)
class ImageRecord:
    id: int
    file_name: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file_name": self.file_name, "width": self.width, "height": self.height}


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The dataset


class CocoDataset:
    """A validated COCO instance dataset. Make one with :meth:`from_dict`, :func:`load_coco` or
    :class:`~crystal_rt.data.builder.CocoBuilder`; it is not meant to be changed after that."""

    source: Path | None
    images_dir: Path | None
    images: list[ImageRecord]
    categories: list[Category]

    def __init__(
        self,
        images: list[ImageRecord],
        categories: list[Category],
        annotations: list[dict[str, Any]],
        rles: list[str],
        *,
        source: Path | None = None,
        images_dir: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.images_dir = images_dir
        self.images = images
        self.categories = sorted(categories, key=lambda c: c.id)
        self._annotations = annotations
        self._rles = rles
        self._extra = dict(extra or {})
        self._records = {im.id: im for im in images}
        self._labels = {c.id: k + 1 for k, c in enumerate(self.categories)}
        self._by_image: dict[int, list[int]] = {im.id: [] for im in images}
        for index, ann in enumerate(annotations):
            self._by_image[ann["image_id"]].append(index)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: Path | None = None, images_dir: Path | None = None
    ) -> CocoDataset:
        """Validate a COCO dict (as parsed from JSON); the input is not modified."""
        check = FieldCheck(source)
        if not isinstance(data, dict):
            raise InvalidDataset(
                f"expected a JSON object with images, annotations and categories, got {describe(data)}",
                path=source,
            )
        for key in _TOP_KEYS:
            check.as_list(check.require(data, key, key), key)
        images = _check_images(check, data["images"])
        categories = _check_categories(check, data["categories"])
        records = {im.id: im for im in images}
        category_ids = {c.id for c in categories}
        annotations: list[dict[str, Any]] = []
        rles: list[str] = []
        seen: set[int] = set()
        for index, raw in enumerate(data["annotations"]):
            ann, rle = _check_annotation(check, raw, f"annotations[{index}]", records, category_ids, seen)
            annotations.append(ann)
            rles.append(rle)
        extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
        return cls(images, categories, annotations, rles, source=source, images_dir=images_dir, extra=extra)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    def label_of(self, category_id: int) -> int:
        """The contiguous model label (1..C, in category-id order) of a category id."""
        try:
            return self._labels[category_id]
        except KeyError:
            raise KeyError(f"no category with id {category_id}") from None

    def image(self, image_id: int) -> ImageRecord:
        try:
            return self._records[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id}") from None

    def annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The validated annotation dicts of an image (copies; bbox, area and iscrowd filled in)."""
        self.image(image_id)
        return [dict(self._annotations[i]) for i in self._by_image[image_id]]

    def masks(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, H, W) bool masks, (N,) int64 contiguous labels and (N,) bool iscrowd of an image."""
        record = self.image(image_id)
        indices = self._by_image[image_id]
        masks = np.zeros((len(indices), record.height, record.width), dtype=bool)
        labels = np.zeros(len(indices), dtype=np.int64)
        crowd = np.zeros(len(indices), dtype=bool)
        for k, index in enumerate(indices):
            runs = rle_string_counts(self._rles[index])
            if runs is None:  # validated at load time
                raise InvalidDataset(f"annotations[{index}].segmentation: corrupt RLE", path=self.source)
            masks[k] = counts_to_mask(runs, record.height, record.width)
            ann = self._annotations[index]
            labels[k] = self._labels[ann["category_id"]]
            crowd[k] = bool(ann["iscrowd"])
        return masks, labels, crowd

    def image_path(self, image_id: int) -> Path:
        record = self.image(image_id)
        if self.images_dir is None:
            raise InvalidDataset(
                f"no images folder is known to resolve {record.file_name!r} against", path=self.source
            )
        return self.images_dir / record.file_name

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._extra,
            "images": [im.to_dict() for im in self.images],
            "annotations": [dict(ann) for ann in self._annotations],
            "categories": [{"id": c.id, "name": c.name} for c in self.categories],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset as compact COCO JSON (atomically)."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
        return atomic_write_bytes(path, (text + "\n").encode())

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"CocoDataset({len(self.images)} images, {len(self._annotations)} annotations, "
            f"classes={self.class_names}, source={self.source})"
        )


def _check_images(check: FieldCheck, values: list[Any]) -> list[ImageRecord]:
    images: list[ImageRecord] = []
    seen: set[int] = set()
    for index, raw in enumerate(values):
        field = f"images[{index}]"
        obj = check.as_dict(raw, field)
        image_id = check.as_int(check.require(obj, "id", f"{field}.id"), f"{field}.id")
        if image_id in seen:
            check.fail(f"{field}.id", f"duplicate image id {image_id}")
        seen.add(image_id)
        name = check.as_name(check.require(obj, "file_name", f"{field}.file_name"), f"{field}.file_name")
        width = check.as_int(check.require(obj, "width", f"{field}.width"), f"{field}.width", minimum=1)
        height = check.as_int(check.require(obj, "height", f"{field}.height"), f"{field}.height", minimum=1)
        images.append(ImageRecord(image_id, name, width, height))
    return images


def _check_categories(check: FieldCheck, values: list[Any]) -> list[Category]:
    categories: list[Category] = []
    ids: set[int] = set()
    names: set[str] = set()
    for index, raw in enumerate(values):
        field = f"categories[{index}]"
        obj = check.as_dict(raw, field)
        cat_id = check.as_int(check.require(obj, "id", f"{field}.id"), f"{field}.id", minimum=1)
        if cat_id in ids:
            check.fail(f"{field}.id", f"duplicate category id {cat_id}")
        name = check.as_name(check.require(obj, "name", f"{field}.name"), f"{field}.name")
        if name in names:
            check.fail(f"{field}.name", f"duplicate category name {name!r}")
        ids.add(cat_id)
        names.add(name)
        categories.append(Category(cat_id, name))
    return categories


def _check_annotation(
    check: FieldCheck,
    raw: Any,
    field: str,
    records: dict[int, ImageRecord],
    category_ids: set[int],
    seen: set[int],
) -> tuple[dict[str, Any], str]:
    obj = check.as_dict(raw, field)
    ann_id = check.as_int(check.require(obj, "id", f"{field}.id"), f"{field}.id")
    if ann_id in seen:
        check.fail(f"{field}.id", f"duplicate annotation id {ann_id}")
    seen.add(ann_id)
    image_id = check.as_int(check.require(obj, "image_id", f"{field}.image_id"), f"{field}.image_id")
    if image_id not in records:
        check.fail(f"{field}.image_id", f"no image with id {image_id}")
    category_id = check.as_int(
        check.require(obj, "category_id", f"{field}.category_id"), f"{field}.category_id"
    )
    if category_id not in category_ids:
        check.fail(f"{field}.category_id", f"no category with id {category_id}")
    image = records[image_id]
    segmentation, rle = check_segmentation(
        check,
        check.require(obj, "segmentation", f"{field}.segmentation"),
        f"{field}.segmentation",
        image.height,
        image.width,
    )
    compressed = {"size": [image.height, image.width], "counts": rle.encode("ascii")}
    if obj.get("bbox") is None:
        bbox = [float(v) for v in mask_utils.toBbox(compressed)]
    else:
        bbox = check_bbox(check, obj["bbox"], f"{field}.bbox")
    if obj.get("area") is None:
        area = float(mask_utils.area(compressed))
    else:
        area = check.as_number(obj["area"], f"{field}.area")
        if area < 0:
            check.fail(f"{field}.area", f"expected a number >= 0, got {area}")
    crowd = 0 if obj.get("iscrowd") is None else check_iscrowd(check, obj["iscrowd"], f"{field}.iscrowd")
    ann = {
        **obj,
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "bbox": bbox,
        "area": area,
        "iscrowd": crowd,
    }
    return ann, rle


def load_coco(path: str | os.PathLike[str], images_dir: str | os.PathLike[str] | None = None) -> CocoDataset:
    """Read and validate a COCO JSON; ``file_name`` is resolved against ``images_dir`` (default:
    the JSON's own folder)."""
    path = Path(path)
    data = read_json(path)
    folder = path.parent if images_dir is None else Path(images_dir)
    return CocoDataset.from_dict(data, source=path, images_dir=folder)
