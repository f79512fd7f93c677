"""Matching predictions to ground truth by mask IoU, as Matterport Mask R-CNN's ``compute_matches``.

IoUs are computed on the overlap of the two masks' crops, never at full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..results.detection import DetectionResult, InstanceMask
from .truth import ImageTruth

__all__ = ["ImageMatches", "bool_crop", "greedy_match", "mask_iou_matrix", "match_image", "matched_truths"]


def mask_iou_matrix(preds: Sequence[InstanceMask], truths: Sequence[InstanceMask]) -> np.ndarray:
    """(P, G) mask IoUs, computed only where the crops overlap (no full-size allocation)."""
    out = np.zeros((len(preds), len(truths)), dtype=np.float64)
    if not preds or not truths:
        return out
    a, b = _extents(preds), _extents(truths)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    area_a = [m.area for m in preds]
    area_b = [m.area for m in truths]
    crops_a = [bool_crop(m) for m in preds]
    crops_b = [bool_crop(m) for m in truths]
    for i, j in zip(*np.nonzero((ix1 > ix0) & (iy1 > iy0)), strict=True):
        pa, tb = preds[i], truths[j]
        xs, xe, ys, ye = int(ix0[i, j]), int(ix1[i, j]), int(iy0[i, j]), int(iy1[i, j])
        inter = np.count_nonzero(
            crops_a[i][ys - pa.y0 : ye - pa.y0, xs - pa.x0 : xe - pa.x0]
            & crops_b[j][ys - tb.y0 : ye - tb.y0, xs - tb.x0 : xe - tb.x0]
        )
        union = area_a[i] + area_b[j] - inter
        out[i, j] = inter / union if union > 0 else 0.0
    return out


def _extents(masks: Sequence[InstanceMask]) -> np.ndarray:
    return np.array(
        [(m.x0, m.y0, m.x0 + m.crop.shape[1], m.y0 + m.crop.shape[0]) for m in masks], dtype=np.int64
    ).reshape(-1, 4)


def bool_crop(mask: InstanceMask) -> np.ndarray:
    return mask.crop if mask.crop.dtype == np.bool_ else mask.crop != 0


def greedy_match(
    ious: np.ndarray, pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """True positives (bool, per prediction) for predictions already sorted by decreasing score.

    Matterport's ``compute_matches``: each prediction looks at the unmatched truths by decreasing
    IoU, stops at the first below ``iou_threshold`` and takes the first with its label.
    """
    return matched_truths(ious, pred_labels, truth_labels, iou_threshold) >= 0


def matched_truths(
    ious: np.ndarray, pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """:func:`greedy_match`'s matching as the truth index each prediction took (-1: none)."""
    num_pred, num_truth = ious.shape
    match = np.full(num_pred, -1, dtype=np.int64)
    if num_pred == 0 or num_truth == 0:
        return match
    taken = np.zeros(num_truth, dtype=bool)
    order = np.argsort(-ious, axis=1, kind="stable")
    for i in range(num_pred):
        row = ious[i]
        for j in order[i]:
            if row[j] < iou_threshold:
                break
            if taken[j] or pred_labels[i] != truth_labels[j]:
                continue
            taken[j] = True
            match[i] = j
            break
    return match


@dataclass
class ImageMatches:
    scores: np.ndarray  # predictions by decreasing score
    labels: np.ndarray
    truth_labels: np.ndarray  # non-crowd
    tp: dict[float, np.ndarray] = field(default_factory=dict)  # IoU threshold -> TP per prediction


def match_image(truth: ImageTruth, result: DetectionResult, thresholds: Sequence[float]) -> ImageMatches:
    gts = [inst for inst in truth.instances if not inst.iscrowd]
    order = sorted(range(len(result.instances)), key=lambda k: -result.instances[k].score)
    preds = [result.instances[k] for k in order]
    matches = ImageMatches(
        scores=np.array([p.score for p in preds], dtype=np.float64),
        labels=np.array([p.label for p in preds], dtype=np.int64),
        truth_labels=np.array([g.label for g in gts], dtype=np.int64),
    )
    ious = mask_iou_matrix([p.mask for p in preds], [g.mask for g in gts])
    for t in thresholds:
        matches.tp[t] = greedy_match(ious, matches.labels, matches.truth_labels, t)
    return matches
