"""COCO RLE for a mask that is stored only inside its box.

A pasted instance mask lives in a small crop (``mask`` at offset ``x0, y0``) of an image of
``height`` x ``width``. COCO's RLE runs over the whole image in column-major order; the runs are
computed here from the crop alone (the zeros outside it are counted, not materialised) and
pycocotools turns them into its compressed string form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["counts_to_mask", "crop_to_rle", "rle_string_counts", "rle_to_mask"]

_MAX_RUN_CHARS = 12  # one run length of a compressed RLE string: 12 x 5 bits is plenty


def crop_to_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, Any]:
    """Compressed COCO RLE (``{"size": [h, w], "counts": str}``) of a crop placed in an image."""
    h, w = mask.shape
    if h == 0 or w == 0 or not mask.any():
        counts = [height * width]
    else:
        # Full-height strip of the crop's columns, column-major: zeros above and below the crop.
        strip = np.zeros((w, height), dtype=np.uint8)
        strip[:, y0 : y0 + h] = mask.T
        flat = strip.ravel()
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate(([0], change, [flat.size]))
        runs = np.diff(bounds).tolist()
        if flat[0]:
            runs.insert(0, 0)
        runs[0] += x0 * height
        # The last run in the strip is zeros only if the strip ends in zero.
        tail = (width - x0 - w) * height
        if not flat[-1]:
            runs[-1] += tail
        elif tail:
            runs.append(tail)
        counts = runs
    rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    counts_out = rle["counts"]
    return {
        "size": [int(height), int(width)],
        "counts": counts_out.decode("ascii") if isinstance(counts_out, bytes) else counts_out,
    }


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a compressed COCO RLE to a boolean (h, w) array (tests and evaluation)."""
    counts = rle["counts"]
    obj = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return np.asarray(mask_utils.decode(obj), dtype=bool)


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
