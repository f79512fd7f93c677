"""COCO AP@[.50:.95] (segm and bbox) from pycocotools' COCOeval, overall and per class."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.writers import coco_results
from ..results.detection import DetectionResult, InstanceMask
from .matching import bool_crop
from .truth import ImageTruth

__all__ = ["coco_ap", "tight_bbox"]


def coco_ap(
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
                    "bbox": tight_bbox(inst.mask),
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


def tight_bbox(mask: InstanceMask) -> list[float]:
    """COCO [x, y, w, h] of the mask's pixels (as pycocotools' toBbox)."""
    crop = bool_crop(mask)
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
