"""Backend parity: match two backends' detections by IoU (never elementwise) and check tolerances.

Detections may come out in another order, and near the score threshold or the K-th place one
backend may keep a detection the other drops. Matching is greedy by reference score, same
label, box IoU >= 0.5. An unmatched detection is tolerated only when it is borderline: its score
within ``score_tol`` of the threshold, or of the lowest score on the other side when that side
is full (K detections).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..runtime.result import DetectionResult, Instance, InstanceMask

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Tolerances:
    box_iou: float = 0.99
    mask_iou: float = 0.98
    score: float = 1e-3


@dataclass
class ImageParity:
    image: str
    num_reference: int
    num_candidate: int
    box_ious: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    severities: list[float] = field(default_factory=list)
    borderline: int = 0

    def fail(self, severity: float, message: str) -> None:
        self.failures.append(message)
        self.severities.append(severity)

    @property
    def matched(self) -> int:
        return len(self.box_ious)


@dataclass
class ParityReport:
    images: list[ImageParity]
    tolerances: Tolerances

    @property
    def ok(self) -> bool:
        return not any(img.failures for img in self.images)

    @property
    def failures(self) -> list[str]:
        return [f"{img.image}: {f}" for img in self.images for f in img.failures]

    def summary(self) -> dict[str, float | int]:
        box = [v for img in self.images for v in img.box_ious]
        mask = [v for img in self.images for v in img.mask_ious]
        score = [v for img in self.images for v in img.score_diffs]
        return {
            "images": len(self.images),
            "images_without_detections": sum(1 for i in self.images if i.num_reference == 0),
            "reference_detections": sum(i.num_reference for i in self.images),
            "candidate_detections": sum(i.num_candidate for i in self.images),
            "matched": len(box),
            "borderline_unmatched": sum(i.borderline for i in self.images),
            "min_box_iou": min(box, default=1.0),
            "min_mask_iou": min(mask, default=1.0),
            "max_score_diff": max(score, default=0.0),
        }


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:  # both degenerate
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


def mask_iou(a: InstanceMask, b: InstanceMask) -> float:
    """IoU of two crop-local masks, computed on the union of their crops only."""
    if a.area == 0 and b.area == 0:
        return 1.0
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    x1 = max(a.x0 + a.crop.shape[1], b.x0 + b.crop.shape[1])
    y1 = max(a.y0 + a.crop.shape[0], b.y0 + b.crop.shape[0])
    canvas = np.zeros((2, y1 - y0, x1 - x0), dtype=bool)
    for i, m in enumerate((a, b)):
        h, w = m.crop.shape
        canvas[i, m.y0 - y0 : m.y0 - y0 + h, m.x0 - x0 : m.x0 - x0 + w] = m.crop
    inter = np.count_nonzero(canvas[0] & canvas[1])
    union = np.count_nonzero(canvas[0] | canvas[1])
    return inter / union


def _describe(inst: Instance) -> str:
    x1, y1, x2, y2 = inst.box
    return f"{inst.label_name} score {inst.score:.4f} at box ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f})"


def compare_results(
    reference: DetectionResult,
    candidate: DetectionResult,
    *,
    score_threshold: float,
    max_detections: int,
    tolerances: Tolerances | None = None,
) -> ImageParity:
    tol = tolerances or Tolerances()
    name = reference.image or "<image>"
    report = ImageParity(name, len(reference.instances), len(candidate.instances))
    unmatched = list(range(len(candidate.instances)))

    def borderline(inst: Instance, other: list[Instance]) -> bool:
        if inst.score - score_threshold <= tol.score:
            return True
        return len(other) >= max_detections and inst.score - min(o.score for o in other) <= tol.score

    for ref in sorted(reference.instances, key=lambda i: -i.score):
        best, best_iou = -1, MATCH_IOU
        for j in unmatched:
            cand = candidate.instances[j]
            iou = box_iou(ref.box, cand.box) if cand.label == ref.label else 0.0
            if iou >= best_iou:
                best, best_iou = j, iou
        if best < 0:
            if borderline(ref, candidate.instances):
                report.borderline += 1
            else:
                report.fail(2.0, f"reference detection {_describe(ref)} has no match")
            continue
        unmatched.remove(best)
        cand = candidate.instances[best]
        m_iou = mask_iou(ref.mask, cand.mask)
        d_score = abs(ref.score - cand.score)
        report.box_ious.append(best_iou)
        report.mask_ious.append(m_iou)
        report.score_diffs.append(d_score)
        if best_iou < tol.box_iou:
            report.fail(1.0 - best_iou, f"box IoU {best_iou:.4f} < {tol.box_iou} for {_describe(ref)}")
        if m_iou < tol.mask_iou:
            report.fail(1.0 - m_iou, f"mask IoU {m_iou:.4f} < {tol.mask_iou} for {_describe(ref)}")
        if d_score > tol.score:
            report.fail(d_score, f"score differs by {d_score:.2e} > {tol.score} for {_describe(ref)}")
    for j in unmatched:
        cand = candidate.instances[j]
        if borderline(cand, reference.instances):
            report.borderline += 1
        else:
            report.fail(2.0, f"extra detection {_describe(cand)} not in the reference")
    return report


def worst_failure(report: ParityReport) -> str:
    """The worst failure: a missing or extra detection first, else the lowest IoU / largest score gap."""
    worst = max(
        ((sev, f"{img.image}: {msg}") for img in report.images for sev, msg in zip(img.severities, img.failures)),
        default=(0.0, ""),
    )
    return worst[1]
