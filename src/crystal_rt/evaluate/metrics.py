"""Accuracy against ground truth: the paper's mAP@0.50 / mAP@0.65, COCO AP, precision and recall.

Ground truth is a list of :class:`ImageTruth` (crop-local masks, labels, crowd flags); predictions
are :class:`~crystal_rt.results.detection.DetectionResult` in the same order. Labels are contiguous
and start at 1: ``class_names[label - 1]`` names label ``label``. Every IoU below is a *mask* IoU
(except COCO's bbox AP), computed on the overlap of the two masks' crops, never at full size.

The parts live beside this module (truth.py, matching.py, ap.py, coco_ap.py, report.py,
plot.py); :func:`evaluate` composes them.

Definitions
-----------
mAP@0.50 / mAP@0.65 (``map50``, ``map65``)
    As the paper (CLAHE + Mask R-CNN for protein crystals) defines them: Matterport Mask R-CNN's
    ``utils.compute_ap``, a per-image AP averaged over images. Per image, the predictions are
    taken by decreasing score; each one looks at the not yet matched ground-truth instances by
    decreasing mask IoU, stops at the first with IoU below the threshold and matches the first
    one with the same label. With precision_i = TP_cumsum / (i + 1) and recall_i = TP_cumsum /
    num_gt, precision is padded with 0 at both ends and recall with 0 at the start and 1 at the
    end, precision is made non-increasing from the end (p[i] = max(p[i], p[i + 1])), and
    AP = sum over the indices where recall changes of (r[i + 1] - r[i]) * p[i + 1]. mAP is the
    mean of that AP over the images with at least one non-crowd ground-truth instance (images
    without ground truth are skipped; an image with ground truth but no predictions has AP 0).
    All predictions given are used: run the detector at a low score threshold. Per class: the
    same with truth and predictions restricted to the class, averaged over the images that
    contain ground truth of that class. Crowd instances are left out of the ground truth here
    (a prediction on a crowd region is a false positive).
COCO AP (``coco_segm_ap``, ``coco_bbox_ap``)
    pycocotools ``COCOeval`` AP@[.50:.95] (``stats[0]``, area "all", 100 detections per image) for
    iouType "segm" and "bbox", all predictions; crowd instances are handled the COCO way. Per
    class: the mean of ``eval["precision"][:, :, k, 0, -1]`` over its entries > -1. 0 when there
    are no predictions at all, NaN when there is no ground truth.
precision / recall
    At the operating point: only the predictions with score >= ``score_threshold``, matched per
    image greedily as above at mask IoU >= 0.5. precision = TP / (TP + FP) (NaN without
    predictions), recall = TP / num_truth (NaN without ground truth); num_truth counts non-crowd
    instances. Predictions on images without ground truth are false positives.
PR curves (``pr_curves``)
    Dataset level: predictions matched per image as above (mask IoU >= t, same label), then
    pooled over the dataset and sorted by decreasing score; cumulative precision and recall,
    one (recall, precision) pair of arrays per class (and "all") and IoU threshold. Empty arrays
    where there is no ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..results.detection import DetectionResult
from .ap import OPERATING_IOU, average_precision, best_f1, mean_ap, operating_point, pr_curve
from .coco_ap import coco_ap
from .matching import greedy_match, mask_iou_matrix, match_image
from .plot import write_pr_curve
from .report import ALL, METRIC_KEYS, EvaluationReport, definitions
from .truth import ImageTruth, TruthInstance, truth_from_masks

__all__ = [
    "ALL",
    "METRIC_KEYS",
    "OPERATING_IOU",
    "EvaluationReport",
    "ImageTruth",
    "TruthInstance",
    "average_precision",
    "definitions",
    "evaluate",
    "greedy_match",
    "mask_iou_matrix",
    "truth_from_masks",
    "write_pr_curve",
]


def _validate(
    truths: Sequence[ImageTruth],
    predictions: Sequence[DetectionResult],
    class_names: Sequence[str],
    iou_thresholds: tuple[float, float],
) -> None:
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} ground-truth images but {len(predictions)} prediction results")
    if len(set(class_names)) != len(class_names) or ALL in class_names:
        raise ValueError(f"class names must be unique and not {ALL!r}: {list(class_names)}")
    if len(iou_thresholds) != 2 or not all(0.0 < t <= 1.0 for t in iou_thresholds):
        raise ValueError(f"iou_thresholds must be two values in (0, 1], got {iou_thresholds}")
    ids = [t.image_id for t in truths]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids in the ground truth are not unique")
    num_classes = len(class_names)
    for truth, result in zip(truths, predictions, strict=True):
        name = truth.file_name or str(truth.image_id)
        if (result.width, result.height) != (truth.width, truth.height):
            raise ValueError(
                f"{name}: prediction is {result.width}x{result.height} "
                f"but the ground truth is {truth.width}x{truth.height}"
            )
        masks = [(i.label, i.mask) for i in truth.instances] + [(p.label, p.mask) for p in result.instances]
        for label, mask in masks:
            if not 1 <= label <= num_classes:
                raise ValueError(f"{name}: label {label} outside 1..{num_classes} (class_names)")
            if (mask.image_width, mask.image_height) != (truth.width, truth.height):
                raise ValueError(
                    f"{name}: a mask is for a {mask.image_width}x{mask.image_height} image, "
                    f"not {truth.width}x{truth.height}"
                )


def evaluate(
    truths: Sequence[ImageTruth],
    predictions: Sequence[DetectionResult],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
    iou_thresholds: tuple[float, float] = (0.5, 0.65),
) -> EvaluationReport:
    """Score ``predictions[i]`` against ``truths[i]``; see the module docstring for the definitions.

    Pass all of the detector's output (run it at a low score threshold): mAP and COCO AP use every
    prediction, precision and recall only those scoring at least ``score_threshold``.
    """
    _validate(truths, predictions, class_names, iou_thresholds)
    thresholds = sorted({float(t) for t in iou_thresholds} | {OPERATING_IOU})
    matches = [match_image(t, r, thresholds) for t, r in zip(truths, predictions, strict=True)]
    coco = coco_ap(truths, predictions, len(class_names))
    t50, t65 = (float(t) for t in iou_thresholds)

    def summary(label: int | None) -> dict[str, float]:
        precision, recall = operating_point(matches, score_threshold, label)
        return {
            "map50": mean_ap(matches, t50, label),
            "map65": mean_ap(matches, t65, label),
            "coco_segm_ap": coco["segm"][0] if label is None else coco["segm"][1][label],
            "coco_bbox_ap": coco["bbox"][0] if label is None else coco["bbox"][1][label],
            "precision": precision,
            "recall": recall,
        }

    classes: dict[str, dict[str, float]] = {}
    pr_curves: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {
        ALL: {t: pr_curve(matches, t, None) for t in (t50, t65)}
    }
    for label, name in enumerate(class_names, 1):
        entry = summary(label)
        entry["num_truth"] = sum(int(np.count_nonzero(m.truth_labels == label)) for m in matches)
        entry["num_predictions"] = sum(int(np.count_nonzero(m.labels == label)) for m in matches)
        classes[name] = entry
        pr_curves[name] = {t: pr_curve(matches, t, label) for t in (t50, t65)}
    overall = summary(None)
    return EvaluationReport(
        map50=overall["map50"],
        map65=overall["map65"],
        coco_segm_ap=overall["coco_segm_ap"],
        coco_bbox_ap=overall["coco_bbox_ap"],
        precision=overall["precision"],
        recall=overall["recall"],
        classes=classes,
        num_images=len(truths),
        num_truth=sum(m.truth_labels.size for m in matches),
        num_predictions=sum(m.labels.size for m in matches),
        score_threshold=float(score_threshold),
        pr_curves=pr_curves,
        iou_thresholds=(t50, t65),
        best_f1=best_f1(matches),
    )
