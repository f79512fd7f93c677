"""Ground truth for evaluation: crop-local instance masks with contiguous labels (from 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.detection import InstanceMask

__all__ = ["ImageTruth", "TruthInstance", "truth_from_masks"]


@dataclass(frozen=True)
class TruthInstance:
    """One ground-truth instance: contiguous label (from 1), crop-local mask, COCO crowd flag."""

    label: int
    mask: InstanceMask
    iscrowd: bool = False


@dataclass(frozen=True)
class ImageTruth:
    """The ground truth of one image."""

    image_id: int
    file_name: str
    height: int
    width: int
    instances: list[TruthInstance]


def truth_from_masks(
    image_id: int,
    file_name: str,
    masks: np.ndarray,
    labels: np.ndarray,
    iscrowd: np.ndarray | None = None,
) -> ImageTruth:
    """Ground truth from full-size (N, H, W) masks: each is cropped to its box; empty ones are dropped."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    n, height, width = masks.shape
    labels = np.asarray(labels).reshape(-1)
    crowd = np.zeros(n, dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(-1)
    if labels.shape[0] != n or crowd.shape[0] != n:
        raise ValueError(f"{n} masks but {labels.shape[0]} labels and {crowd.shape[0]} crowd flags")
    instances: list[TruthInstance] = []
    for mask, label, is_crowd in zip(masks, labels, crowd, strict=True):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool)
        instances.append(
            TruthInstance(int(label), InstanceMask(crop, x0, y0, int(height), int(width)), bool(is_crowd))
        )
    return ImageTruth(int(image_id), str(file_name), int(height), int(width), instances)
