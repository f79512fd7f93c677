"""How much accuracy a calibrated graph loses against its FP32 source, on the same images.

With a validation set (COCO JSON) both graphs are scored against its ground truth. Without one,
the FP32 graph's own detections (at its operating threshold) on images held out from calibration
serve as the truth: FP32 then scores 1.0 by construction and the drop is the calibrated graph's
disagreement with FP32 — stricter than a drop against ground truth.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..evaluate.metrics import ImageTruth, TruthInstance, evaluate, mask_iou_matrix
from ..evaluate.run import AP_SCORE_THRESHOLD, evaluate_detector
from ..results.detection import DetectionResult, Instance

if TYPE_CHECKING:
    from ..data.coco import CocoDataset
    from ..runtime.detector import Detector

MATCH_IOU = 0.5


@dataclass
class AccuracyReport:
    """mAP of FP32 and the calibrated graph on one image set, and how well their masks agree."""

    reference: str
    num_images: int
    fp32_map50: float
    fp32_map65: float
    map50: float
    map65: float
    matched: int  # calibrated detections paired with an FP32 one (same label, mask IoU >= 0.5)
    fp32_detections: int  # FP32 detections at the operating threshold
    detections: int  # calibrated detections at the operating threshold
    matched_mask_iou: float  # mean mask IoU of the pairs
    fp32_engine_ms: float  # median engine time per image, this run
    engine_ms: float

    @property
    def map50_drop(self) -> float:
        return self.fp32_map50 - self.map50

    @property
    def map65_drop(self) -> float:
        return self.fp32_map65 - self.map65

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["map50_drop"] = self.map50_drop
        data["map65_drop"] = self.map65_drop
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in data.items()}


def _kept(result: DetectionResult, threshold: float) -> list[Instance]:
    return [inst for inst in result.instances if inst.score >= threshold]


def match_masks(reference: Sequence[Instance], candidate: Sequence[Instance]) -> list[float]:
    """Mask IoUs of one-to-one pairs (same label, IoU >= 0.5), assigned by decreasing IoU."""
    ious = mask_iou_matrix([c.mask for c in candidate], [r.mask for r in reference])
    pairs: list[float] = []
    if ious.size == 0:
        return pairs
    same = np.array([[c.label == r.label for r in reference] for c in candidate], dtype=bool)
    ious = np.where(same, ious, 0.0)
    used_c: set[int] = set()
    used_r: set[int] = set()
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        i, j = divmod(int(flat), ious.shape[1])
        if ious[i, j] < MATCH_IOU:
            break
        if i in used_c or j in used_r:
            continue
        used_c.add(i)
        used_r.add(j)
        pairs.append(float(ious[i, j]))
    return pairs


def _pseudo_truth(results: Sequence[DetectionResult], threshold: float) -> list[ImageTruth]:
    return [
        ImageTruth(
            i,
            r.image or str(i),
            r.height,
            r.width,
            [TruthInstance(inst.label, inst.mask, False) for inst in _kept(r, threshold)],
        )
        for i, r in enumerate(results)
    ]


def compare_accuracy(
    fp32: Detector,
    candidate: Detector,
    *,
    dataset: CocoDataset | None = None,
    images: Sequence[Path] = (),
    on_image: Callable[[], None] | None = None,
) -> AccuracyReport:
    """Score both detectors on ``dataset`` (ground truth) or on ``images`` (FP32 as the truth)."""
    threshold = fp32.score_threshold
    if dataset is not None:
        ref_report, ref_results = evaluate_detector(fp32, dataset, on_image=on_image)
        cand_report, cand_results = evaluate_detector(candidate, dataset, on_image=on_image)
        reference = f"ground truth of {len(dataset)} validation image(s)"
    else:
        ref_results, cand_results = [], []
        for path in images:
            ref_results.append(fp32.detect(path, score_threshold=AP_SCORE_THRESHOLD))
            cand_results.append(candidate.detect(path, score_threshold=AP_SCORE_THRESHOLD))
            if on_image is not None:
                on_image()
                on_image()
        truths = _pseudo_truth(ref_results, threshold)
        names = list(fp32.model.class_names)
        ref_report = evaluate(truths, ref_results, names, score_threshold=threshold)
        cand_report = evaluate(truths, cand_results, names, score_threshold=threshold)
        reference = f"FP32 detections on {len(images)} image(s) held out from calibration"
    ious: list[float] = []
    fp32_count = cand_count = 0
    for ref, cand in zip(ref_results, cand_results, strict=True):
        ref_kept, cand_kept = _kept(ref, threshold), _kept(cand, threshold)
        fp32_count += len(ref_kept)
        cand_count += len(cand_kept)
        ious.extend(match_masks(ref_kept, cand_kept))
    return AccuracyReport(
        reference=reference,
        num_images=len(ref_results),
        fp32_map50=ref_report.map50,
        fp32_map65=ref_report.map65,
        map50=cand_report.map50,
        map65=cand_report.map65,
        matched=len(ious),
        fp32_detections=fp32_count,
        detections=cand_count,
        matched_mask_iou=float(np.mean(ious)) if ious else float("nan"),
        fp32_engine_ms=_median_engine_ms(ref_results),
        engine_ms=_median_engine_ms(cand_results),
    )


def _median_engine_ms(results: Sequence[DetectionResult]) -> float:
    times = [r.timings_ms.get("engine", float("nan")) for r in results]
    return float(statistics.median(times)) if times else float("nan")
