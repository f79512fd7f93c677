"""The evaluation report: the numbers, their one-sentence definitions, JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ap import OPERATING_IOU

__all__ = ["ALL", "METRIC_KEYS", "EvaluationReport", "definitions", "json_float"]

ALL = "all"
METRIC_KEYS = ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall")


@dataclass
class EvaluationReport:
    """Accuracy numbers for a data set; see the module docstring for the definitions."""

    map50: float
    map65: float
    coco_segm_ap: float
    coco_bbox_ap: float
    precision: float
    recall: float
    classes: dict[str, dict[str, float]]
    num_images: int
    num_truth: int
    num_predictions: int
    score_threshold: float
    pr_curves: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]
    iou_thresholds: tuple[float, float] = (0.5, 0.65)
    # The score threshold that maximises F1 (mask IoU >= 0.5) on this data, with its numbers.
    best_f1: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (plain floats and ints, NaN as None); PR curves are left out."""
        return {
            "map50": json_float(self.map50),
            "map65": json_float(self.map65),
            "coco_segm_ap": json_float(self.coco_segm_ap),
            "coco_bbox_ap": json_float(self.coco_bbox_ap),
            "precision": json_float(self.precision),
            "recall": json_float(self.recall),
            "classes": {
                name: {
                    key: (int(value) if key.startswith("num_") else json_float(value))
                    for key, value in metrics.items()
                }
                for name, metrics in self.classes.items()
            },
            "num_images": int(self.num_images),
            "num_truth": int(self.num_truth),
            "num_predictions": int(self.num_predictions),
            "score_threshold": float(self.score_threshold),
            "iou_thresholds": [float(t) for t in self.iou_thresholds],
            "best_f1": {key: json_float(value) for key, value in self.best_f1.items()},
            "definitions": definitions(self.iou_thresholds, self.score_threshold),
        }


def definitions(
    iou_thresholds: tuple[float, float] = (0.5, 0.65), score_threshold: float = 0.5
) -> dict[str, str]:
    """One sentence per reported number."""
    paper = (
        "mean over images with ground truth of the per-image AP (Matterport Mask R-CNN compute_ap, "
        "as in the paper) at mask IoU >= {t:g}: predictions by decreasing score, greedy match to "
        "the unmatched same-label instance of highest IoU, all-point interpolated AP; crowd ignored"
    )
    coco = (
        "pycocotools COCOeval AP@[.50:.95] (stats[0]) with iouType '{kind}', all predictions; "
        "0 without predictions, null without ground truth"
    )
    return {
        "map50": paper.format(t=iou_thresholds[0]),
        "map65": paper.format(t=iou_thresholds[1]),
        "coco_segm_ap": coco.format(kind="segm"),
        "coco_bbox_ap": coco.format(kind="bbox"),
        "precision": (
            f"TP / (TP + FP) over predictions with score >= {score_threshold:g}, greedy match at "
            f"mask IoU >= {OPERATING_IOU:g} and same label; null without predictions"
        ),
        "recall": (
            f"TP / num_truth for predictions with score >= {score_threshold:g}, greedy match at "
            f"mask IoU >= {OPERATING_IOU:g} and same label; null without ground truth"
        ),
        "num_truth": "non-crowd ground-truth instances",
        "num_predictions": "all predictions evaluated (any score)",
        "num_images": "images evaluated, with or without ground truth",
    }


def json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
