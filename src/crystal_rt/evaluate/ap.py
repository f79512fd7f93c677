"""Average precision (the paper's per-image mAP), the operating point, PR curves and the best F1.

Definitions are in :mod:`crystal_rt.evaluate.metrics`' docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .matching import ImageMatches

__all__ = ["OPERATING_IOU", "average_precision", "best_f1", "mean_ap", "operating_point", "pr_curve"]

OPERATING_IOU = 0.5


def average_precision(tp: np.ndarray, num_truth: int) -> float:
    """Matterport's ``compute_ap`` from the TP flags of score-sorted predictions (num_truth > 0)."""
    hits = np.cumsum(tp, dtype=np.float64)
    precisions = np.concatenate(([0.0], hits / np.arange(1, tp.size + 1), [0.0]))
    recalls = np.concatenate(([0.0], hits / num_truth, [1.0]))
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    idx = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    return float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))


def mean_ap(matches: Sequence[ImageMatches], t: float, label: int | None) -> float:
    aps: list[float] = []
    for m in matches:
        num_truth = m.truth_labels.size if label is None else int(np.count_nonzero(m.truth_labels == label))
        if num_truth == 0:
            continue
        tp = m.tp[t] if label is None else m.tp[t][m.labels == label]
        aps.append(average_precision(tp, num_truth))
    return float(np.mean(aps)) if aps else math.nan


def operating_point(
    matches: Sequence[ImageMatches], score_threshold: float, label: int | None
) -> tuple[float, float]:
    tp = num_pred = num_truth = 0
    for m in matches:
        keep = m.scores >= score_threshold
        if label is not None:
            keep &= m.labels == label
        tp += int(np.count_nonzero(m.tp[OPERATING_IOU][keep]))
        num_pred += int(np.count_nonzero(keep))
        num_truth += m.truth_labels.size if label is None else int(np.count_nonzero(m.truth_labels == label))
    precision = tp / num_pred if num_pred else math.nan
    recall = tp / num_truth if num_truth else math.nan
    return precision, recall


def pr_curve(matches: Sequence[ImageMatches], t: float, label: int | None) -> tuple[np.ndarray, np.ndarray]:
    scores, hits = [], []
    num_truth = 0
    for m in matches:
        keep = np.ones(m.labels.size, dtype=bool) if label is None else m.labels == label
        scores.append(m.scores[keep])
        hits.append(m.tp[t][keep])
        num_truth += m.truth_labels.size if label is None else int(np.count_nonzero(m.truth_labels == label))
    if num_truth == 0:
        return np.zeros(0), np.zeros(0)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    order = np.argsort(-all_scores, kind="stable")
    cum = np.cumsum(all_hits[order], dtype=np.float64)
    return cum / num_truth, cum / np.arange(1, cum.size + 1)


def best_f1(matches: Sequence[ImageMatches]) -> dict[str, float]:
    """The score threshold with the highest F1 at the operating IoU, pooled over all images."""
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    hits = np.concatenate([m.tp[OPERATING_IOU] for m in matches]) if matches else np.zeros(0, bool)
    num_truth = sum(m.truth_labels.size for m in matches)
    if scores.size == 0 or num_truth == 0:
        return {}
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], np.cumsum(hits[order], dtype=np.float64)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every tie
    precision = tp / np.arange(1, tp.size + 1)
    recall = tp / num_truth
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    return {
        "score_threshold": float(scores[i]),
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "f1": float(f1[i]),
    }
