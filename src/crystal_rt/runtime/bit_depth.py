"""Significant bits of 16-bit images (design note 27).

12- and 14-bit cameras store their data in 16-bit files, so the file's values use 1/16 or 1/4 of
the 16-bit range. The recipe's intensity step (``bit_depth``: divide by 2^bits - 1) and OpenCV's
16-bit CLAHE (65536 bins, a clip limit relative to the tile's pixel count) both work on code
values, so such an image is expanded to the full 16-bit range before the recipe's first step:
``v' = round(v * 65535 / (2^b - 1))``, values above 2^b - 1 clipped to 65535 (counted; said once).

The bit depth comes from the file (:func:`crystal_rt.io.decode.read_image_info`: TIFF
MaxSampleValue / SMaxSampleValue / BitsPerSample 9..15, PNG sBIT) unless the caller gives one
(``--bit-depth N``, ``bit_depth=``), which wins. It applies to 16-bit images only: an 8-bit image
is 8-bit whatever is asked. A 16-bit image with no known bit depth whose largest value is below
4096 (1/16 of the range) is processed as it is, with a warning (once per Detector) that suggests
``--bit-depth 12``.

Then the image meets the bit depth the model was trained on (the recipe's ``training_bit_depth``):
a model trained on 8-bit images (the paper and CHiMP presets, every recipe older than the field)
gets a 16-bit image mapped to 8 bits, ``v8 = round(v16 / 257)`` (``(v * 255 + 32767) // 65535``),
before CLAHE, so it sees the 8-bit CLAHE (256 bins) it was trained with; a 12-bit picture then
gives exactly the 8-bit picture it was made from. A model trained on 16-bit images
(``training_bit_depth: 16``) gets 16-bit CLAHE. The map runs on the host, before any upload, so
the CPU and GPU paths see the same pixels (:func:`to_training_bit_depth`).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import numpy as np

from ..errors import InvalidOption
from ..io.decode import DecodedImage

log = logging.getLogger("crystal_rt.bit_depth")

MIN_BITS, MAX_BITS = 1, 16
#: a 16-bit image of unknown bit depth whose largest value is below this uses < 1/16 of its range
LOW_RANGE = 4096
_FULL = 65535


def check_bit_depth(bit_depth: object) -> int | None:
    """``bit_depth`` as an int in 1..16, or None; InvalidOption for anything else."""
    if bit_depth is None:
        return None
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int | np.integer):
        raise InvalidOption(f"bit_depth must be an integer in 1..16 or None, got {bit_depth!r}")
    if not MIN_BITS <= int(bit_depth) <= MAX_BITS:
        raise InvalidOption(f"bit_depth must be in 1..16, got {bit_depth}")
    return int(bit_depth)


def resolve_bit_depth(*candidates: int | None) -> int | None:
    """The first bit depth given (the call's, then the Detector's, then the file's), or None."""
    return next((bits for bits in candidates if bits is not None), None)


@lru_cache(maxsize=16)
def _expansion_table(bits: int) -> np.ndarray:
    """65536 entries: round(v * 65535 / (2^bits - 1)) (halves up, exact integer arithmetic) for
    v <= 2^bits - 1, 65535 above."""
    top = (1 << bits) - 1
    table = np.full(_FULL + 1, _FULL, dtype=np.uint16)
    codes = np.arange(top + 1, dtype=np.int64)
    table[: top + 1] = (codes * (2 * _FULL) + top) // (2 * top)
    table.setflags(write=False)
    return table


def expand_bit_depth(pixels: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """A 16-bit image with ``bits`` significant bits expanded to the full 16-bit range, and the
    number of samples above 2^bits - 1 (clipped to 65535). 8-bit images and ``bits == 16`` are
    returned as they are (the same array), with 0."""
    if pixels.dtype != np.uint16 or bits >= MAX_BITS:
        return pixels, 0
    clipped = int(np.count_nonzero(pixels > (1 << bits) - 1))
    expanded: np.ndarray = _expansion_table(bits)[pixels]
    return expanded, clipped


@lru_cache(maxsize=1)
def _to_8_bit_table() -> np.ndarray:
    """65536 entries: round(v * 255 / 65535) = round(v / 257), halves up, exact integer arithmetic."""
    codes = np.arange(_FULL + 1, dtype=np.int64)
    table = ((codes * 255 + _FULL // 2) // _FULL).astype(np.uint8)
    table.setflags(write=False)
    return table


def to_training_bit_depth(pixels: np.ndarray, training_bit_depth: int) -> np.ndarray:
    """The image at the bit depth the model was trained on: a 16-bit (full-range) image mapped to 8
    bits, ``round(v / 257)``, for ``training_bit_depth`` 8; anything else as it is (the same array)."""
    if pixels.dtype != np.uint16 or training_bit_depth != 8:
        return pixels
    mapped: np.ndarray = _to_8_bit_table()[pixels]
    return mapped


class OnceWarnings:
    """Warnings said once per kind (per Detector, or per process for :data:`PROCESS_WARNINGS`),
    on the ``crystal_rt.bit_depth`` logger. Thread-safe."""

    def __init__(self) -> None:
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str) -> bool:
        """Log ``message`` unless a warning of this ``kind`` was said before; whether it was logged."""
        with self._lock:
            if kind in self._said:
                return False
            self._said.add(kind)
        log.warning("%s", message)
        return True


#: for pipelines run without a Detector of their own
PROCESS_WARNINGS = OnceWarnings()


def low_range_message(name: str | None, largest: int) -> str:
    return (
        f"{name or '<image>'}: a 16-bit image whose largest value is {largest} (less than 1/16 of "
        "the 16-bit range) and no bit depth in the file: processed as 16-bit data, which CLAHE and "
        "the model see as nearly black; for a 12-bit camera pass --bit-depth 12 (API: bit_depth=12), "
        "or the camera's bit depth (said once)"
    )


def clipped_message(name: str | None, clipped: int, bits: int) -> str:
    return (
        f"{name or '<image>'}: {clipped} sample(s) above {(1 << bits) - 1}, the largest value of "
        f"{bits} bits, clipped to 65535; is the bit depth ({bits}) right? (said once)"
    )


def fit_bit_depth(
    pixels: np.ndarray,
    bit_depth: int | None,
    *,
    name: str | None = None,
    warnings: OnceWarnings | None = None,
) -> np.ndarray:
    """What the recipe's first step sees: a 16-bit image expanded from ``bit_depth`` significant
    bits to the full range (see the module docstring), with the warnings said once."""
    if pixels.dtype != np.uint16:
        return pixels
    notes = PROCESS_WARNINGS if warnings is None else warnings
    if bit_depth is None:
        largest = int(pixels.max())
        if largest < LOW_RANGE:
            notes.warn("low-range", low_range_message(name, largest))
        return pixels
    expanded, clipped = expand_bit_depth(pixels, bit_depth)
    if clipped:
        notes.warn("clipped", clipped_message(name, clipped, bit_depth))
    return expanded


def full_range(decoded: DecodedImage, bit_depth: int | None = None) -> np.ndarray:
    """The pixels the recipe sees for a decoded file: expanded from ``bit_depth``, else the file's
    bit depth (training, calibration and the Triton pre model, so that they see what the Detector
    sees); nothing is said about clipped samples or a low range."""
    bits = resolve_bit_depth(check_bit_depth(bit_depth), decoded.bit_depth)
    if bits is None:
        return decoded.pixels
    expanded, _ = expand_bit_depth(decoded.pixels, bits)
    return expanded
