"""Labelme annotation files: read one into instance masks, convert many into a :class:`CocoDataset`.

Shapes with an area become instances: ``polygon`` (also legacy files whose shapes have no
``shape_type``), ``rectangle`` (two opposite corners, in any order), ``circle`` (the centre and a
point on the circumference) and ``mask`` (Labelme 5: a base64 PNG of the box given by two points).
``line``, ``linestrip``, ``point`` and ``points`` have no area and are skipped (counted in
:attr:`LabelmeFile.skipped`, as are shapes that fall entirely outside the image). Shapes sharing
a label and a (non-null) ``group_id`` are one instance: the union of their masks.

Rasterisation convention, at whole-pixel precision: Labelme's coordinates put pixel (column i,
row j) on the unit square [i, i+1) x [j, j+1), so a point (x, y) falls in pixel
(floor(x), floor(y)), and a shape's outline pixels are inside it. Polygons are those pixel
vertices filled with ``cv2.fillPoly`` (8-connected outline); rectangles cover every pixel from one
corner's pixel to the other's, inclusive; circles cover the pixels whose index lies within
r + 0.5 of the centre's pixel, r being the distance between the two points. So a rectangle from
(0, 0) to (9.7, 9.2) covers 10 x 10 pixels. Labelme's own export (PIL's ImageDraw) gives the same
rectangles; its polygons and circles can differ from these by a pixel along the edge. Mask shapes
are pasted with their two points as the inclusive pixel box of the mask image (Labelme writes
whole-pixel points for them).

The image size is ``imageHeight`` x ``imageWidth``; without those, the size of the embedded
``imageData``; without that, the size of the file ``imagePath`` names (relative to the JSON).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InvalidDataset, InvalidImage
from ..io.decode import read_image
from ..io.writers import atomic_write_bytes
from .builder import CocoBuilder
from .coco import CocoDataset
from .fields import FieldCheck, read_json

AREA_SHAPES = frozenset({"polygon", "rectangle", "circle", "mask"})
NO_AREA_SHAPES = frozenset({"line", "linestrip", "point", "points"})
_MIN_POINTS = {"polygon": 3, "rectangle": 2, "circle": 2, "mask": 2}
_MAX_POINTS = {"circle": 2, "mask": 2}
_SUFFIXES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"),
)


@dataclass(frozen=True)
class LabelmeFile:
    """One Labelme JSON: the image it annotates and its instances as full-size bool masks."""

    path: Path  # the JSON file
    image_path: Path | None  # imagePath resolved against the JSON's folder (it may not exist)
    image_bytes: bytes | None  # the decoded base64 imageData, if embedded
    width: int
    height: int
    instances: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (label, bool (H, W))
    skipped: int = 0  # shapes without area (line, point, ...) or entirely outside the image


def read_labelme(path: str | os.PathLike[str]) -> LabelmeFile:
    """Read and validate one Labelme JSON file."""
    path = Path(path)
    data = read_json(path)
    check = FieldCheck(path)
    if not isinstance(data, dict):
        raise InvalidDataset("expected a Labelme JSON object with shapes", path=path)
    shapes = check.as_list(check.require(data, "shapes", "shapes"), "shapes")
    image_bytes = _image_bytes(check, data.get("imageData"))
    image_path = _image_path(check, data.get("imagePath"), path)
    height, width = _image_size(check, data, image_bytes, image_path)
    instances, skipped = _instances(check, shapes, height, width)
    return LabelmeFile(path, image_path, image_bytes, width, height, instances, skipped)


def _image_bytes(check: FieldCheck, value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        check.fail("imageData", "expected a base64 string")
    try:
        data = _b64decode(value)
    except (binascii.Error, ValueError):
        check.fail("imageData", "not valid base64")
    if not data:
        check.fail("imageData", "empty")
    return data


def _b64decode(text: str) -> bytes:
    """Strict base64, line breaks allowed."""
    return base64.b64decode("".join(text.split()), validate=True)


def _image_path(check: FieldCheck, value: Any, json_path: Path) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        check.fail("imagePath", "expected a string")
    candidate = json_path.parent / value
    if not candidate.exists() and "\\" in value:  # saved on Windows: ..\images\a.jpg
        alternative = json_path.parent / value.replace("\\", "/")
        if alternative.exists():
            return alternative
    return candidate


def _decode(check: FieldCheck, source: bytes | Path, where: str) -> np.ndarray:
    try:
        return read_image(source, name=f"{check.source} {where}" if isinstance(source, bytes) else None)
    except InvalidImage as exc:
        check.fail(where, f"cannot decode the image: {exc}")


def _image_size(
    check: FieldCheck, data: dict[str, Any], image_bytes: bytes | None, image_path: Path | None
) -> tuple[int, int]:
    embedded = None if image_bytes is None else _decode(check, image_bytes, "imageData").shape[:2]
    if data.get("imageHeight") is not None or data.get("imageWidth") is not None:
        height = check.as_int(data.get("imageHeight"), "imageHeight", minimum=1)
        width = check.as_int(data.get("imageWidth"), "imageWidth", minimum=1)
        if embedded is not None and embedded != (height, width):
            check.fail(
                "imageHeight",
                f"imageHeight x imageWidth is {height}x{width} but the embedded imageData is "
                f"{embedded[0]}x{embedded[1]}",
            )
        return height, width
    if embedded is not None:
        return int(embedded[0]), int(embedded[1])
    if image_path is not None and image_path.is_file():
        shape = _decode(check, image_path, "imagePath").shape
        return int(shape[0]), int(shape[1])
    check.fail(
        "imageHeight", "missing, and there is no imageData or readable imagePath to take the size from"
    )


def _points(check: FieldCheck, value: Any, where: str, height: int, width: int) -> np.ndarray:
    if not isinstance(value, list):
        check.fail(where, "expected a list of [x, y] pairs")
    points = np.zeros((len(value), 2), dtype=np.float64)
    for j, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            check.fail(f"{where}[{j}]", "expected an [x, y] pair of numbers")
        x = check.as_number(pair[0], f"{where}[{j}][0]")
        y = check.as_number(pair[1], f"{where}[{j}][1]")
        if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            check.fail(f"{where}[{j}]", f"({x}, {y}) is far outside the {width}x{height} image")
        points[j] = (x, y)
    return points


def _pixels(points: np.ndarray) -> np.ndarray:
    """Labelme coordinates to the indices of the pixels they fall in, int32 for OpenCV."""
    return np.asarray(np.floor(points), dtype=np.int32)


def _rasterise(
    check: FieldCheck,
    shape: dict[str, Any],
    kind: str,
    points: np.ndarray,
    where: str,
    height: int,
    width: int,
) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=np.uint8)
    pixels = _pixels(points)
    if kind == "polygon":
        cv2.fillPoly(canvas, [pixels.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = pixels.min(axis=0), pixels.max(axis=0)
        cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 1, thickness=cv2.FILLED)
    elif kind == "circle":
        _fill_disk(canvas, int(pixels[0, 0]), int(pixels[0, 1]), float(np.hypot(*(points[1] - points[0]))))
    else:
        _paste_mask(check, shape, pixels, where, canvas)
    return canvas.astype(bool)


def _fill_disk(canvas: np.ndarray, cx: int, cy: int, radius: float) -> None:
    """Fill the pixels whose index lies within radius + 0.5 of the centre pixel."""
    height, width = canvas.shape
    reach = radius + 0.5
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)), width - 1)
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)), height - 1)
    if x0 > x1 or y0 > y1:
        return
    yy, xx = np.ogrid[y0 : y1 + 1, x0 : x1 + 1]
    canvas[y0 : y1 + 1, x0 : x1 + 1] = (xx - cx) ** 2 + (yy - cy) ** 2 <= reach * reach


def _paste_mask(
    check: FieldCheck, shape: dict[str, Any], pixels: np.ndarray, where: str, canvas: np.ndarray
) -> None:
    encoded = shape.get("mask")
    if not isinstance(encoded, str) or not encoded:
        check.fail(f"{where}.mask", "expected a base64 PNG string for a mask shape")
    try:
        png = _b64decode(encoded)
    except (binascii.Error, ValueError):
        check.fail(f"{where}.mask", "not valid base64")
    crop = _decode(check, png, f"{where}.mask")
    inside = np.asarray(crop.any(axis=2) if crop.ndim == 3 else crop != 0, dtype=bool)
    x0, y0 = (int(v) for v in pixels.min(axis=0))
    x1, y1 = (int(v) for v in pixels.max(axis=0))
    if inside.shape != (y1 - y0 + 1, x1 - x0 + 1):
        check.fail(
            f"{where}.mask",
            f"the mask image is {inside.shape[0]}x{inside.shape[1]} but the points give a "
            f"{y1 - y0 + 1}x{x1 - x0 + 1} box",
        )
    height, width = canvas.shape
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y1 + 1, height), min(x1 + 1, width)
    if top < bottom and left < right:
        canvas[top:bottom, left:right] = inside[top - y0 : bottom - y0, left - x0 : right - x0]


def _instances(
    check: FieldCheck, shapes: list[Any], height: int, width: int
) -> tuple[list[tuple[str, np.ndarray]], int]:
    instances: list[tuple[str, np.ndarray]] = []
    groups: dict[tuple[str, int], int] = {}
    skipped = 0
    for index, raw in enumerate(shapes):
        where = f"shapes[{index}]"
        shape = check.as_dict(raw, where)
        label = check.as_name(check.require(shape, "label", f"{where}.label"), f"{where}.label")
        kind = shape.get("shape_type")
        if kind is None or kind == "":
            kind = "polygon"  # legacy files have no shape_type
        elif not isinstance(kind, str):
            check.fail(f"{where}.shape_type", "expected a string")
        if kind in NO_AREA_SHAPES:
            skipped += 1
            continue
        if kind not in AREA_SHAPES:
            check.fail(
                f"{where}.shape_type",
                f"unsupported shape type {kind!r}; expected polygon, rectangle, circle or mask "
                "(line, linestrip and point shapes are skipped)",
            )
        group = shape.get("group_id")
        group_id = None if group is None else check.as_int(group, f"{where}.group_id")
        points = _points(
            check, check.require(shape, "points", f"{where}.points"), f"{where}.points", height, width
        )
        low, high = _MIN_POINTS[kind], _MAX_POINTS.get(kind)
        if len(points) < low or (high is not None and len(points) > high):
            wanted = f"{low}" if high == low else f"at least {low}"
            check.fail(f"{where}.points", f"a {kind} needs {wanted} points, got {len(points)}")
        mask = _rasterise(check, shape, kind, points, where, height, width)
        if not mask.any():
            skipped += 1
            continue
        key = (label, group_id) if group_id is not None else None
        if key is not None and key in groups:
            merged = instances[groups[key]][1]
            np.logical_or(merged, mask, out=merged)
            continue
        if key is not None:
            groups[key] = len(instances)
        instances.append((label, mask))
    return instances, skipped


# ---------------------------------------------------------------------------------------------
# Many files -> one COCO dataset


def labelme_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into their ``*.json`` files (sorted, non-recursive, no dotfiles)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(
                child
                for child in sorted(path.iterdir())
                if child.suffix.lower() == ".json" and not child.name.startswith(".") and child.is_file()
            )
        elif path.exists():
            files.append(path)
        else:
            raise InvalidDataset("file not found", path=path)
    return files


def labelme_to_coco(paths: Sequence[str | os.PathLike[str]], images_out: Path | None = None) -> CocoDataset:
    """Convert Labelme files (or folders of them) into one dataset.

    Each file's image is its ``imagePath`` when that file can be decoded; otherwise the embedded
    ``imageData`` is written to ``images_out`` (as the original PNG/JPEG/TIFF/BMP bytes, or PNG for
    other formats) under the JSON's stem. ``file_name`` values are relative to the deepest folder
    holding all the images, which is the dataset's ``images_dir``. Categories are the labels,
    sorted by name (ids 1..C), so that files converted separately agree while they share labels.
    """
    files = labelme_files(paths)
    if not files:
        raise InvalidDataset(
            "no Labelme .json files found in " + ", ".join(str(p) for p in paths),
            path=Path(paths[0]) if len(paths) == 1 else None,
        )
    builder = CocoBuilder(class_names=())
    taken: set[str] = set()
    for path in files:
        labelme = read_labelme(path)
        image = _image_file(labelme, images_out, taken)
        image_id = builder.add_image(image, labelme.width, labelme.height)
        for label, mask in labelme.instances:
            builder.add_mask(image_id, mask, label)
    data = builder.to_dict()
    root = _common_folder([Path(im["file_name"]) for im in data["images"]])
    for im in data["images"]:
        im["file_name"] = _relative(Path(im["file_name"]), root)
    return CocoDataset.from_dict(_sort_categories(data), images_dir=root)


def _image_file(labelme: LabelmeFile, images_out: Path | None, taken: set[str]) -> str:
    """The absolute path of the file holding the image, extracting embedded image data if needed."""
    check = FieldCheck(labelme.path)
    problem = "imagePath is missing"
    if labelme.image_path is not None:
        problem = f"image file {labelme.image_path} not found"
        if labelme.image_path.is_file():
            try:
                pixels = read_image(labelme.image_path)
            except InvalidImage as exc:
                problem = f"cannot decode the image: {exc}"
            else:
                if pixels.shape[:2] != (labelme.height, labelme.width):
                    check.fail(
                        "imageHeight",
                        f"imageHeight x imageWidth is {labelme.height}x{labelme.width} but the image file "
                        f"{labelme.image_path} is {pixels.shape[0]}x{pixels.shape[1]}",
                    )
                return os.path.abspath(labelme.image_path)
    if labelme.image_bytes is None:
        check.fail("imagePath", f"{problem} and the file has no embedded imageData")
    if images_out is None:
        check.fail(
            "imageData", f"{problem}; pass an images folder (--images-out) to extract the embedded image"
        )
    data, suffix = _image_payload(labelme)
    name = f"{labelme.path.stem}{suffix}"
    counter = 1
    while name in taken:
        counter += 1
        name = f"{labelme.path.stem}-{counter}{suffix}"
    taken.add(name)
    return os.path.abspath(atomic_write_bytes(Path(images_out) / name, data))


def _image_payload(labelme: LabelmeFile) -> tuple[bytes, str]:
    """The embedded bytes as they are (PNG, JPEG, TIFF, BMP), or re-encoded as PNG."""
    data = labelme.image_bytes or b""
    for magic, suffix in _SUFFIXES:
        if data.startswith(magic):
            return data, suffix
    pixels = read_image(data, name=f"{labelme.path} imageData")  # decodable: checked when read
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise InvalidDataset("imageData: cannot re-encode the embedded image as PNG", path=labelme.path)
    return encoded.tobytes(), ".png"


def _common_folder(files: list[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(f.parent) for f in files]))
    except ValueError:  # different drives: file names stay absolute
        return Path(files[0].anchor)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _sort_categories(data: dict[str, Any]) -> dict[str, Any]:
    """Renumber categories 1..C in name order."""
    names = sorted(c["name"] for c in data["categories"])
    new_id = {name: k + 1 for k, name in enumerate(names)}
    old_to_new = {c["id"]: new_id[c["name"]] for c in data["categories"]}
    for ann in data["annotations"]:
        ann["category_id"] = old_to_new[ann["category_id"]]
    data["categories"] = [{"id": new_id[name], "name": name} for name in names]
    return data
