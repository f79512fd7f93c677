"""Building a COCO dataset from masks or polygons (the synthetic generator, the converters)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .coco import CocoDataset, ImageRecord
from .fields import FieldCheck
from .segmentation import check_polygons, counts_string, encode_mask, polygons_rle

__all__ = ["CocoBuilder"]


class CocoBuilder:
    """Collect images and instance masks or polygons, then :meth:`build` a validated dataset.

    Category ids are 1..C in the order the names are first given; image and annotation ids are
    1-based and sequential.
    """

    def __init__(self, class_names: Sequence[str] = ("crystal",)) -> None:
        self._categories: dict[str, int] = {}
        self._images: dict[int, ImageRecord] = {}
        self._annotations: list[dict[str, Any]] = []
        for name in class_names:
            self.category_id(name)

    def category_id(self, name: str) -> int:
        """The id of a category, added (as the next id) if it is new."""
        if name not in self._categories:
            FieldCheck(None).as_name(name, "category name")
            self._categories[name] = len(self._categories) + 1
        return self._categories[name]

    def add_image(self, file_name: str, width: int, height: int) -> int:
        check = FieldCheck(None)
        check.as_name(file_name, "file_name")
        check.as_int(width, "width", minimum=1)
        check.as_int(height, "height", minimum=1)
        image_id = len(self._images) + 1
        self._images[image_id] = ImageRecord(image_id, file_name, int(width), int(height))
        return image_id

    def _record(self, image_id: int) -> ImageRecord:
        try:
            return self._images[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id}") from None

    def add_mask(self, image_id: int, mask: np.ndarray, category: str = "crystal") -> int | None:
        """Add a bool (H, W) instance mask as compressed RLE; an empty mask is skipped (None)."""
        record = self._record(image_id)
        if mask.shape != (record.height, record.width):
            raise ValueError(
                f"mask shape {mask.shape} differs from image {image_id}'s ({record.height}, {record.width})"
            )
        if not mask.any():
            return None
        rle = encode_mask(np.asarray(mask, dtype=bool))
        segmentation = {"size": [record.height, record.width], "counts": counts_string(rle)}
        return self._add(image_id, category, segmentation, rle)

    def add_polygons(self, image_id: int, polygons: list[list[float]], category: str) -> int | None:
        """Add COCO polygons (flat [x1, y1, x2, y2, ...] lists); one with no area is skipped (None)."""
        record = self._record(image_id)
        checked = check_polygons(FieldCheck(None), polygons, "polygons", record.height, record.width)
        rle = polygons_rle(checked, record.height, record.width)
        return self._add(image_id, category, checked, rle)

    def _add(self, image_id: int, category: str, segmentation: Any, rle: dict[str, Any]) -> int | None:
        area = int(mask_utils.area(rle))
        if area == 0:
            return None
        ann_id = len(self._annotations) + 1
        self._annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": self.category_id(category),
                "segmentation": segmentation,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(area),
                "iscrowd": 0,
            }
        )
        return ann_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [im.to_dict() for im in self._images.values()],
            "annotations": list(self._annotations),
            "categories": [{"id": cat_id, "name": name} for name, cat_id in self._categories.items()],
        }

    def build(self, *, images_dir: Path | None = None) -> CocoDataset:
        return CocoDataset.from_dict(self.to_dict(), images_dir=images_dir)
