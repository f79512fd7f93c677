"""Training images cached at the engine's scale, after the engine's own preprocessing.

Each image is decoded, CLAHE-enhanced as ``PreprocessSpec`` says (at full resolution, exactly
as ``Detector`` does) and resized by the letterbox scale, so the network trains on what it will
see at inference. Masks are resized with area interpolation and kept as COCO RLE to save memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..geometry import letterbox_size
from ..io.decode import read_image_info
from ..runtime.bit_depth import full_range
from ..runtime.preprocess import letterboxed
from ..spec import PreprocessSpec

if TYPE_CHECKING:
    from ..data.coco import CocoDataset


@dataclass
class CachedImage:
    """One training image: float16 [0, 1] pixels (H, W) or (H, W, 3) at engine scale, masks as RLE."""

    name: str
    pixels: np.ndarray
    rles: list[dict[str, object]]
    labels: np.ndarray  # int64 (N,), contiguous 1..C
    areas: np.ndarray  # float64 (N,), mask areas at engine scale
    plain: np.ndarray | None = None  # the same pixels without CLAHE (for the CLAHE on/off augmentation)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def masks(self) -> np.ndarray:
        """(N, H, W) uint8 masks at engine scale."""
        from pycocotools import mask as mask_utils

        h, w = self.shape
        if not self.rles:
            return np.zeros((0, h, w), np.uint8)
        with warnings.catch_warnings():  # pycocotools' Cython warns under numpy 2; harmless
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(self.rles)  # (H, W, N)
        return np.ascontiguousarray(np.moveaxis(decoded, 2, 0))


def prepare_image(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    """CLAHE (per spec) then resize by the letterbox scale: float16 [0, 1], and the scale."""
    canvas, scale = letterboxed(pixels, spec)  # the engine's own CLAHE and resize
    height, width = pixels.shape[:2]
    _, new_w, new_h = letterbox_size(height, width, spec.resize.hw)
    content = canvas[:new_h, :new_w]
    top = 65535.0 if content.dtype == np.uint16 else 255.0
    return (content.astype(np.float32) / np.float32(top)).astype(np.float16), scale


def cache_image(
    dataset: CocoDataset, image_id: int, spec: PreprocessSpec, *, keep_plain: bool = False
) -> CachedImage:
    """One image as training sees it; ``keep_plain`` also keeps it without CLAHE (when the spec has
    CLAHE), for crops that train the model to cope with CLAHE off."""
    from pycocotools import mask as mask_utils

    path = dataset.image_path(image_id)
    decoded = full_range(read_image_info(path))  # as the Detector expands it
    pixels, _ = prepare_image(decoded, spec)
    plain = prepare_image(decoded, spec.with_overrides(clahe=False))[0] if keep_plain and spec.clahe else None
    masks, labels, crowd = dataset.masks(image_id)
    h, w = pixels.shape[:2]
    rles: list[dict[str, object]] = []
    keep: list[int] = []
    for i, mask in enumerate(masks):
        if crowd[i]:
            continue
        small = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        if not small.any():
            continue
        rles.append(mask_utils.encode(np.asfortranarray(small.astype(np.uint8))))
        keep.append(i)
    areas = np.array([float(mask_utils.area(r)) for r in rles], dtype=np.float64)
    return CachedImage(str(path.name), pixels, rles, labels[keep].astype(np.int64), areas, plain)


def cache_dataset(
    dataset: CocoDataset,
    image_ids: Sequence[int],
    spec: PreprocessSpec,
    on_image: Callable[[], None] | None = None,
    *,
    keep_plain: bool = False,
) -> list[CachedImage]:
    cached = []
    for image_id in image_ids:
        cached.append(cache_image(dataset, image_id, spec, keep_plain=keep_plain))
        if on_image is not None:
            on_image()
    return cached
