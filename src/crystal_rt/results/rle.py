"""COCO RLE for a mask that is stored only inside its box.

A pasted instance mask lives in a small crop (``mask`` at offset ``x0, y0``) of an image of
``height`` x ``width``. COCO's RLE runs over the whole image in column-major order; the runs are
computed here from the crop alone (the zeros outside it are counted, not materialised) and
pycocotools turns them into its compressed string form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


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
