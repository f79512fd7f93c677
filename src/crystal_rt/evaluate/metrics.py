"""Accuracy against ground truth: the paper's mAP@0.50 / mAP@0.65, COCO AP, precision and recall.

Ground truth is a list of :class:`ImageTruth` (crop-local masks, labels, crowd flags); predictions
are :class:`~crystal_rt.results.detection.DetectionResult` in the same order. Labels are contiguous
and start at 1: ``class_names[label - 1]`` names label ``label``. Every IoU below is a *mask* IoU
(except COCO's bbox AP), computed on the overlap of the two masks' crops, never at full size.

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

import contextlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CrystalRtError
from ..io.writers import atomic_write_bytes, coco_results
from ..results.detection import DetectionResult, InstanceMask

OPERATING_IOU = 0.5
ALL = "all"
METRIC_KEYS = ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall")


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
            "map50": _json_float(self.map50),
            "map65": _json_float(self.map65),
            "coco_segm_ap": _json_float(self.coco_segm_ap),
            "coco_bbox_ap": _json_float(self.coco_bbox_ap),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "classes": {
                name: {
                    key: (int(value) if key.startswith("num_") else _json_float(value))
                    for key, value in metrics.items()
                }
                for name, metrics in self.classes.items()
            },
            "num_images": int(self.num_images),
            "num_truth": int(self.num_truth),
            "num_predictions": int(self.num_predictions),
            "score_threshold": float(self.score_threshold),
            "iou_thresholds": [float(t) for t in self.iou_thresholds],
            "best_f1": {key: _json_float(value) for key, value in self.best_f1.items()},
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
    crops_a = [_bool_crop(m) for m in preds]
    crops_b = [_bool_crop(m) for m in truths]
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


def _bool_crop(mask: InstanceMask) -> np.ndarray:
    return mask.crop if mask.crop.dtype == np.bool_ else mask.crop != 0


def greedy_match(
    ious: np.ndarray, pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """True positives (bool, per prediction) for predictions already sorted by decreasing score.

    Matterport's ``compute_matches``: each prediction looks at the unmatched truths by decreasing
    IoU, stops at the first below ``iou_threshold`` and takes the first with its label.
    """
    num_pred, num_truth = ious.shape
    tp = np.zeros(num_pred, dtype=bool)
    if num_pred == 0 or num_truth == 0:
        return tp
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
            tp[i] = True
            break
    return tp


def average_precision(tp: np.ndarray, num_truth: int) -> float:
    """Matterport's ``compute_ap`` from the TP flags of score-sorted predictions (num_truth > 0)."""
    hits = np.cumsum(tp, dtype=np.float64)
    precisions = np.concatenate(([0.0], hits / np.arange(1, tp.size + 1), [0.0]))
    recalls = np.concatenate(([0.0], hits / num_truth, [1.0]))
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    idx = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    return float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))


@dataclass
class _ImageMatches:
    scores: np.ndarray  # predictions by decreasing score
    labels: np.ndarray
    truth_labels: np.ndarray  # non-crowd
    tp: dict[float, np.ndarray] = field(default_factory=dict)  # IoU threshold -> TP per prediction


def _match_image(truth: ImageTruth, result: DetectionResult, thresholds: Sequence[float]) -> _ImageMatches:
    gts = [inst for inst in truth.instances if not inst.iscrowd]
    order = sorted(range(len(result.instances)), key=lambda k: -result.instances[k].score)
    preds = [result.instances[k] for k in order]
    matches = _ImageMatches(
        scores=np.array([p.score for p in preds], dtype=np.float64),
        labels=np.array([p.label for p in preds], dtype=np.int64),
        truth_labels=np.array([g.label for g in gts], dtype=np.int64),
    )
    ious = mask_iou_matrix([p.mask for p in preds], [g.mask for g in gts])
    for t in thresholds:
        matches.tp[t] = greedy_match(ious, matches.labels, matches.truth_labels, t)
    return matches


def _mean_ap(matches: Sequence[_ImageMatches], t: float, label: int | None) -> float:
    aps: list[float] = []
    for m in matches:
        num_truth = m.truth_labels.size if label is None else int(np.count_nonzero(m.truth_labels == label))
        if num_truth == 0:
            continue
        tp = m.tp[t] if label is None else m.tp[t][m.labels == label]
        aps.append(average_precision(tp, num_truth))
    return float(np.mean(aps)) if aps else math.nan


def _operating_point(
    matches: Sequence[_ImageMatches], score_threshold: float, label: int | None
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


def _pr_curve(matches: Sequence[_ImageMatches], t: float, label: int | None) -> tuple[np.ndarray, np.ndarray]:
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


def best_f1(matches: Sequence[_ImageMatches]) -> dict[str, float]:
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


def _coco_ap(
    truths: Sequence[ImageTruth], predictions: Sequence[DetectionResult], num_classes: int
) -> dict[str, tuple[float, dict[int, float]]]:
    """iouType -> (AP@[.50:.95], per-label AP) from pycocotools, with its printing silenced."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = range(1, num_classes + 1)
    has_truth = {
        label: any(i.label == label and not i.iscrowd for t in truths for i in t.instances)
        for label in labels
    }
    any_truth = any(has_truth.values())
    detections = coco_results(predictions, [t.image_id for t in truths])
    if not any_truth or not detections:
        overall = 0.0 if any_truth else math.nan
        empty = {label: (0.0 if has_truth[label] else math.nan) for label in labels}
        return {"segm": (overall, empty), "bbox": (overall, dict(empty))}

    annotations: list[dict[str, Any]] = []
    for truth in truths:
        for inst in truth.instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": truth.image_id,
                    "category_id": inst.label,
                    "segmentation": inst.mask.to_rle(),
                    "area": float(inst.mask.area),
                    "bbox": _tight_bbox(inst.mask),
                    "iscrowd": int(inst.iscrowd),
                }
            )
    out: dict[str, tuple[float, dict[int, float]]] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [
                {"id": t.image_id, "file_name": t.file_name, "height": t.height, "width": t.width}
                for t in truths
            ],
            "annotations": annotations,
            "categories": [{"id": label, "name": f"class_{label}"} for label in labels],
        }
        gt.createIndex()
        for kind, drop in (("segm", ("bbox", "file_name")), ("bbox", ("segmentation", "area", "file_name"))):
            # segm: no bbox, so that loadRes takes the area from the mask (as detectron2 does).
            dets = [{k: v for k, v in d.items() if k not in drop} for d in detections]
            coco_eval = COCOeval(gt, gt.loadRes(dets), kind)
            coco_eval.params.imgIds = sorted(t.image_id for t in truths)
            coco_eval.params.catIds = list(labels)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            precision = coco_eval.eval["precision"]
            per_class: dict[int, float] = {}
            for k, label in enumerate(labels):
                values = precision[:, :, k, 0, -1]
                values = values[values > -1]
                per_class[label] = float(np.mean(values)) if values.size else math.nan
            stat = float(coco_eval.stats[0])
            out[kind] = (stat if stat > -1 else math.nan, per_class)
    return out


def _tight_bbox(mask: InstanceMask) -> list[float]:
    """COCO [x, y, w, h] of the mask's pixels (as pycocotools' toBbox)."""
    crop = _bool_crop(mask)
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(crop.any(axis=0))
    return [
        float(mask.x0 + cols[0]),
        float(mask.y0 + rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
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
    matches = [_match_image(t, r, thresholds) for t, r in zip(truths, predictions, strict=True)]
    coco = _coco_ap(truths, predictions, len(class_names))
    t50, t65 = (float(t) for t in iou_thresholds)

    def summary(label: int | None) -> dict[str, float]:
        precision, recall = _operating_point(matches, score_threshold, label)
        return {
            "map50": _mean_ap(matches, t50, label),
            "map65": _mean_ap(matches, t65, label),
            "coco_segm_ap": coco["segm"][0] if label is None else coco["segm"][1][label],
            "coco_bbox_ap": coco["bbox"][0] if label is None else coco["bbox"][1][label],
            "precision": precision,
            "recall": recall,
        }

    classes: dict[str, dict[str, float]] = {}
    pr_curves: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {
        ALL: {t: _pr_curve(matches, t, None) for t in (t50, t65)}
    }
    for label, name in enumerate(class_names, 1):
        entry = summary(label)
        entry["num_truth"] = sum(int(np.count_nonzero(m.truth_labels == label)) for m in matches)
        entry["num_predictions"] = sum(int(np.count_nonzero(m.labels == label)) for m in matches)
        classes[name] = entry
        pr_curves[name] = {t: _pr_curve(matches, t, label) for t in (t50, t65)}
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


def write_pr_curve(report: EvaluationReport, path: str | os.PathLike[str]) -> Path:
    """Precision-recall plot (one panel per IoU threshold, a line per class and "all"), written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise CrystalRtError(
            "plotting precision-recall curves needs matplotlib, which is not installed: "
            "pip install matplotlib"
        ) from exc
    path = Path(path)
    thresholds = list(report.iou_thresholds)
    fig = Figure(figsize=(5.0 * len(thresholds), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    axes = fig.subplots(1, len(thresholds), squeeze=False)[0]
    names = [ALL] + [name for name in report.pr_curves if name != ALL]
    for ax, t in zip(axes, thresholds, strict=True):
        for name in names:
            recall, precision = report.pr_curves.get(name, {}).get(t, (np.zeros(0), np.zeros(0)))
            if recall.size == 0:
                continue
            ax.plot(
                recall,
                precision,
                label=name,
                color="black" if name == ALL else None,
                linewidth=2.0 if name == ALL else 1.2,
                marker="." if recall.size < 2 else None,
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"mask IoU ≥ {t:g}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(path, buf.getvalue())


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
