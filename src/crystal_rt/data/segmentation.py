"""COCO segmentations and boxes: checked, rasterised and encoded as pycocotools does.

A segmentation is polygons (a list of flat ``[x1, y1, x2, y2, ...]`` lists) or RLE, compressed
(``counts`` a string) or uncompressed (``counts`` a list of run lengths); RLE ``size`` must be the
image's ``[height, width]``. Compressed strings are decoded and their runs checked
(:func:`crystal_rt.results.rle.rle_string_counts`) before pycocotools sees them, since its C
decoder does not check bounds. Polygons are rasterised by pycocotools, as COCO evaluation does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..results.rle import rle_string_counts
from .fields import FieldCheck, describe

__all__ = [
    "check_bbox",
    "check_iscrowd",
    "check_polygons",
    "check_rle",
    "check_segmentation",
    "counts_string",
    "encode_mask",
    "polygons_rle",
]

_UINT32_LIMIT = 2**32


def counts_string(rle: dict[str, Any]) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    return dict(mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8)))


def polygons_rle(polygons: list[list[float]], height: int, width: int) -> dict[str, Any]:
    return dict(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def check_polygons(check: FieldCheck, value: Any, field: str, height: int, width: int) -> list[list[float]]:
    polygons = check.as_list(value, field)
    if not polygons:
        check.fail(field, "expected at least one polygon")
    out: list[list[float]] = []
    for k, poly in enumerate(polygons):
        where = f"{field}[{k}]"
        if not isinstance(poly, list):
            check.fail(where, f"expected a flat list [x1, y1, x2, y2, ...] of numbers, got {describe(poly)}")
        coords = [check.as_number(v, f"{where}[{j}]") for j, v in enumerate(poly)]
        if len(coords) < 6 or len(coords) % 2:
            check.fail(where, f"expected an even number (>= 6) of coordinates, got {len(coords)}")
        for j, v in enumerate(coords):
            limit = width if j % 2 == 0 else height
            if not -limit <= v <= 2 * limit:
                check.fail(f"{where}[{j}]", f"coordinate {v} is far outside the {width}x{height} image")
        out.append(coords)
    return out


def check_rle(
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
        check_runs(check, runs, f"{field}.counts", total)
        return {"size": [height, width], "counts": counts}, counts
    if isinstance(counts, list):
        run_list = [check.as_int(v, f"{field}.counts[{i}]", minimum=0) for i, v in enumerate(counts)]
        check_runs(check, np.asarray(run_list, dtype=np.int64), f"{field}.counts", total)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": run_list}, height, width)
        return {"size": [height, width], "counts": run_list}, counts_string(rle)
    check.fail(
        f"{field}.counts",
        f"expected a compressed RLE string or a list of run lengths, got {describe(counts)}",
    )


def check_runs(check: FieldCheck, runs: np.ndarray, field: str, total: int) -> None:
    if runs.size and (runs.min() < 0 or runs.max() >= _UINT32_LIMIT):
        check.fail(field, "run lengths must be between 0 and 2**32 - 1")
    if int(runs.sum()) != total:
        check.fail(field, f"run lengths add up to {int(runs.sum())}, not height * width = {total}")


def check_segmentation(check: FieldCheck, value: Any, field: str, height: int, width: int) -> tuple[Any, str]:
    """The segmentation as it is stored (counts as str) and its compressed RLE counts string."""
    if isinstance(value, list):
        polygons = check_polygons(check, value, field, height, width)
        return polygons, counts_string(polygons_rle(polygons, height, width))
    if isinstance(value, dict):
        return check_rle(check, value, field, height, width)
    check.fail(
        field,
        "expected polygons (a list of flat [x1, y1, x2, y2, ...] lists) or an RLE object {size, counts}, "
        f"got {describe(value)}",
    )


def check_bbox(check: FieldCheck, value: Any, field: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 4:
        check.fail(field, f"expected [x, y, width, height], got {describe(value)}")
    box = [check.as_number(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if box[2] < 0 or box[3] < 0:
        check.fail(field, f"width and height must not be negative, got {box}")
    return box


def check_iscrowd(check: FieldCheck, value: Any, field: str) -> int:
    if isinstance(value, bool):
        return int(value)
    crowd = check.as_int(value, field)
    if crowd not in (0, 1):
        check.fail(field, f"expected 0 or 1, got {crowd}")
    return crowd
