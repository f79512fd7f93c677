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
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import InvalidDataset
from ..io.writers import atomic_write_bytes

_MISSING: Any = object()
_TOP_KEYS = ("images", "annotations", "categories")
_MAX_RUN_CHARS = 12  # one run length of a compressed RLE string: 12 x 5 bits is plenty
_UINT32_LIMIT = 2**32


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
# Field checks shared by the readers


class FieldCheck:
    """Type checks that raise :class:`InvalidDataset` naming ``source`` and the field path."""

    def __init__(self, source: str | os.PathLike[str] | None) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> NoReturn:
        raise InvalidDataset(f"{field}: {message}", path=self.source)

    def require(self, obj: dict[str, Any], key: str, field: str) -> Any:
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            self.fail(field, "missing")
        return value

    def as_dict(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"expected an object, got {_kind(value)}")
        return value

    def as_list(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(field, f"expected a list, got {_kind(value)}")
        return value

    def as_int(self, value: Any, field: str, *, minimum: int | None = None) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            self.fail(field, f"expected an integer >= {minimum}, got {value}")
        return value

    def as_number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(field, f"expected a finite number, got {value}")
        return number

    def as_name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(field, f"expected a non-empty string, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    names: dict[type, str] = {dict: "an object", list: "a list"}
    return names.get(type(value), type(value).__name__)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file (UTF-8, an optional BOM); every failure is an InvalidDataset naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidDataset("file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise InvalidDataset("is a folder, not a JSON file", path=path) from exc
    except OSError as exc:
        raise InvalidDataset(f"cannot read file: {exc.strerror or exc}", path=path) from exc
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidDataset("not a UTF-8 JSON file", path=path) from exc
    except json.JSONDecodeError as exc:
        raise InvalidDataset(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=path
        ) from exc
    except RecursionError as exc:
        raise InvalidDataset("not valid JSON: nested too deeply", path=path) from exc


# ---------------------------------------------------------------------------------------------
# RLE and polygons


def rle_string_counts(text: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string (int64), or None if it is malformed.

    This is pycocotools' ``rleFrString`` in numpy: each run is a little-endian group of 5-bit
    chunks (characters ``'0'`` + value, ``0x20`` = more chunks follow, ``0x10`` in the last one =
    negative), and from the fourth run on each value is a delta to the run two places before.
    """
    try:
        chars = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if chars.size == 0 or chars.min() < 0 or chars.max() > 63:
        return None
    more = (chars & 0x20) != 0
    if more[-1]:
        return None  # truncated in the middle of a run
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_RUN_CHARS:
        return None
    position = np.arange(chars.size) - np.repeat(starts, lengths)
    raw = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[ends] & 0x10) != 0
    raw[negative] |= np.left_shift(np.int64(-1), 5 * lengths[negative])
    counts: np.ndarray = raw.copy()
    counts[1::2] = np.cumsum(raw[1::2])
    counts[2::2] = np.cumsum(raw[2::2])
    return counts


def counts_to_mask(counts: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask from column-major run lengths (zeros first), checked beforehand."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return np.ascontiguousarray(flat.reshape(width, height).T)


def _rle_string(rle: dict[str, Any]) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def _encode_mask(mask: np.ndarray) -> dict[str, Any]:
    return dict(mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8)))


def _polygons_rle(polygons: list[list[float]], height: int, width: int) -> dict[str, Any]:
    return dict(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def _check_polygons(check: FieldCheck, value: Any, field: str, height: int, width: int) -> list[list[float]]:
    polygons = check.as_list(value, field)
    if not polygons:
        check.fail(field, "expected at least one polygon")
    out: list[list[float]] = []
    for k, poly in enumerate(polygons):
        where = f"{field}[{k}]"
        if not isinstance(poly, list):
            check.fail(where, f"expected a flat list [x1, y1, x2, y2, ...] of numbers, got {_kind(poly)}")
        coords = [check.as_number(v, f"{where}[{j}]") for j, v in enumerate(poly)]
        if len(coords) < 6 or len(coords) % 2:
            check.fail(where, f"expected an even number (>= 6) of coordinates, got {len(coords)}")
        for j, v in enumerate(coords):
            limit = width if j % 2 == 0 else height
            if not -limit <= v <= 2 * limit:
                check.fail(f"{where}[{j}]", f"coordinate {v} is far outside the {width}x{height} image")
        out.append(coords)
    return out


def _check_rle(
    check: FieldCheck, value: dict[str, Any], field: str, height: int, width: int
) -> tuple[dict[str, Any], str]:
    """The RLE as it is stored (counts str or list) and its compressed counts string."""
    size = check.require(value, "size", f"{field}.size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or [check.as_int(v, f"{field}.size[{i}]") for i, v in enumerate(size)] != [height, width]
    ):
        check.fail(
            f"{field}.size", f"expected the image's [height, width] = [{height}, {width}], got {size!r}"
        )
    counts = check.require(value, "counts", f"{field}.counts")
    total = height * width
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            check.fail(f"{field}.counts", "compressed RLE bytes are not ASCII")
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            check.fail(f"{field}.counts", "not a valid compressed RLE string")
        _check_runs(check, runs, f"{field}.counts", total)
        return {"size": [height, width], "counts": counts}, counts
    if isinstance(counts, list):
        run_list = [check.as_int(v, f"{field}.counts[{i}]", minimum=0) for i, v in enumerate(counts)]
        _check_runs(check, np.asarray(run_list, dtype=np.int64), f"{field}.counts", total)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": run_list}, height, width)
        return {"size": [height, width], "counts": run_list}, _rle_string(rle)
    check.fail(
        f"{field}.counts", f"expected a compressed RLE string or a list of run lengths, got {_kind(counts)}"
    )


def _check_runs(check: FieldCheck, runs: np.ndarray, field: str, total: int) -> None:
    if runs.size and (runs.min() < 0 or runs.max() >= _UINT32_LIMIT):
        check.fail(field, "run lengths must be between 0 and 2**32 - 1")
    if int(runs.sum()) != total:
        check.fail(field, f"run lengths add up to {int(runs.sum())}, not height * width = {total}")


def _check_segmentation(
    check: FieldCheck, value: Any, field: str, height: int, width: int
) -> tuple[Any, str]:
    """The segmentation as it is stored (counts as str) and its compressed RLE counts string."""
    if isinstance(value, list):
        polygons = _check_polygons(check, value, field, height, width)
        return polygons, _rle_string(_polygons_rle(polygons, height, width))
    if isinstance(value, dict):
        return _check_rle(check, value, field, height, width)
    check.fail(
        field,
        "expected polygons (a list of flat [x1, y1, x2, y2, ...] lists) or an RLE object {size, counts}, "
        f"got {_kind(value)}",
    )


def _check_bbox(check: FieldCheck, value: Any, field: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 4:
        check.fail(field, f"expected [x, y, width, height], got {_kind(value)}")
    box = [check.as_number(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if box[2] < 0 or box[3] < 0:
        check.fail(field, f"width and height must not be negative, got {box}")
    return box


def _check_iscrowd(check: FieldCheck, value: Any, field: str) -> int:
    if isinstance(value, bool):
        return int(value)
    crowd = check.as_int(value, field)
    if crowd not in (0, 1):
        check.fail(field, f"expected 0 or 1, got {crowd}")
    return crowd


# ---------------------------------------------------------------------------------------------
# The dataset


class CocoDataset:
    """A validated COCO instance dataset. Make one with :meth:`from_dict`, :func:`load_coco` or
    :class:`CocoBuilder`; it is not meant to be changed after that."""

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
                f"expected a JSON object with images, annotations and categories, got {_kind(data)}",
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
    segmentation, rle = _check_segmentation(
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
        bbox = _check_bbox(check, obj["bbox"], f"{field}.bbox")
    if obj.get("area") is None:
        area = float(mask_utils.area(compressed))
    else:
        area = check.as_number(obj["area"], f"{field}.area")
        if area < 0:
            check.fail(f"{field}.area", f"expected a number >= 0, got {area}")
    crowd = 0 if obj.get("iscrowd") is None else _check_iscrowd(check, obj["iscrowd"], f"{field}.iscrowd")
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


# ---------------------------------------------------------------------------------------------
# Building a dataset


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
        rle = _encode_mask(np.asarray(mask, dtype=bool))
        segmentation = {"size": [record.height, record.width], "counts": _rle_string(rle)}
        return self._add(image_id, category, segmentation, rle)

    def add_polygons(self, image_id: int, polygons: list[list[float]], category: str) -> int | None:
        """Add COCO polygons (flat [x1, y1, x2, y2, ...] lists); one with no area is skipped (None)."""
        record = self._record(image_id)
        checked = _check_polygons(FieldCheck(None), polygons, "polygons", record.height, record.width)
        rle = _polygons_rle(checked, record.height, record.width)
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
