"""Backend parity: match two backends' detections by IoU (never elementwise) and check tolerances.

Detections may come out in another order, and near the score threshold or the K-th place one
backend may keep a detection the other drops. Pairs are assigned greedily by decreasing box IoU
(same label, IoU >= 0.5). An unmatched detection is tolerated only when it is borderline: its score
within ``score_tol`` of the threshold, or of the lowest score on the other side when that side
is full (K detections), or one of a pair of near-ties: an unmatched detection on each side, same
label, scores within ``score_tol`` (TopK and NMS may keep either of two equally scored boxes), or
an NMS tie: on its own side its IoU with a higher-scoring detection of the same label is within
``nms_margin`` of the NMS threshold ``nms_iou`` (one backend's rounding puts the pair just over
the threshold and drops it, the other's just under and keeps it).

Degenerate boxes (less than a pixel wide or high, as saturating models give) have IoUs that float
rounding swings by percent: such a pair whose coordinates all agree within ``box_px`` (0.05 px)
passes the box check whatever its IoU; any pair that close is matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..results.detection import DetectionResult, Instance, InstanceMask

if TYPE_CHECKING:
    from ..runtime.detector import Detector

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Tolerances:
    box_iou: float = 0.99
    mask_iou: float = 0.98
    score: float = 1e-3
    box_px: float = 0.05  # coordinates this close are the same box, whatever the IoU
    nms_iou: float = 0.5  # the model's box NMS IoU threshold (torchvision's default)
    nms_margin: float = 1e-3  # an IoU this close to nms_iou is an NMS tie


@dataclass
class ImageParity:
    image: str
    num_reference: int
    num_candidate: int
    box_ious: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    problems: list[tuple[float, str]] = field(default_factory=list)  # (severity, message)
    borderline: int = 0

    def fail(self, severity: float, message: str) -> None:
        self.problems.append((severity, message))

    @property
    def failures(self) -> list[str]:
        return [message for _, message in self.problems]

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


def box_coord_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """The largest difference between corresponding box coordinates, in pixels."""
    return max(abs(float(u) - float(v)) for u, v in zip(a, b, strict=True))


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
    return float(inter / union)


def _short_side(box: Sequence[float]) -> float:
    return min(float(box[2]) - float(box[0]), float(box[3]) - float(box[1]))


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

    def nms_tie(inst: Instance, own: list[Instance]) -> bool:
        """NMS kept or dropped ``inst`` at an IoU within nms_margin of its threshold."""
        return any(
            o is not inst
            and o.label == inst.label
            and o.score >= inst.score
            and abs(box_iou(o.box, inst.box) - tol.nms_iou) <= tol.nms_margin
            for o in own
        )

    def borderline(inst: Instance, other: list[Instance], own: list[Instance]) -> bool:
        if inst.score - score_threshold <= tol.score:
            return True
        if len(other) >= max_detections and inst.score - min(o.score for o in other) <= tol.score:
            return True
        return nms_tie(inst, own)

    refs, cands = reference.instances, candidate.instances
    # Assign pairs in order of decreasing box IoU (same label, IoU >= 0.5), so that exact
    # counterparts are paired before shifted neighbours (random weights make many of those);
    # boxes whose coordinates agree within box_px rank as IoU 1 (degenerate boxes).
    pairs = sorted(
        (
            (box_iou(r.box, c.box), box_coord_diff(r.box, c.box), i, j)
            for i, r in enumerate(refs)
            for j, c in enumerate(cands)
            if r.label == c.label
        ),
        key=lambda t: (-(1.0 if t[1] <= tol.box_px else t[0]), t[1]),
    )
    ref_free, cand_free = set(range(len(refs))), set(range(len(cands)))
    for iou, coord_diff, i, j in pairs:
        same_box = coord_diff <= tol.box_px
        if iou < MATCH_IOU and not same_box:
            break
        degenerate = same_box and min(_short_side(refs[i].box), _short_side(cands[j].box)) < 1.0
        if i not in ref_free or j not in cand_free:
            continue
        ref_free.discard(i)
        cand_free.discard(j)
        ref, cand = refs[i], cands[j]
        m_iou = mask_iou(ref.mask, cand.mask)
        d_score = abs(ref.score - cand.score)
        report.box_ious.append(iou)
        report.mask_ious.append(m_iou)
        report.score_diffs.append(d_score)
        if iou < tol.box_iou and not degenerate:
            report.fail(
                1.0 - iou,
                f"box IoU {iou:.4f} < {tol.box_iou} (coordinates up to {coord_diff:.3f} px apart, more "
                f"than {tol.box_px} px) for {_describe(ref)}",
            )
        if m_iou < tol.mask_iou:
            report.fail(1.0 - m_iou, f"mask IoU {m_iou:.4f} < {tol.mask_iou} for {_describe(ref)}")
        if d_score > tol.score:
            report.fail(d_score, f"score differs by {d_score:.2e} > {tol.score} for {_describe(ref)}")
    lost = [refs[i] for i in sorted(ref_free)]
    unmatched = sorted(cand_free)
    extra = [candidate.instances[j] for j in unmatched]
    # Near-ties: where candidates score within tolerance of each other, TopK/NMS may keep a different
    # one of them. An unmatched detection on each side with (nearly) the same score is such a swap.
    for ref in list(lost):
        swap = next(
            (c for c in extra if c.label == ref.label and abs(c.score - ref.score) <= tol.score), None
        )
        if swap is not None:
            lost.remove(ref)
            extra.remove(swap)
            report.borderline += 2
    for ref in lost:
        if borderline(ref, candidate.instances, refs):
            report.borderline += 1
        else:
            report.fail(2.0, f"reference detection {_describe(ref)} has no match")
    for cand in extra:
        if borderline(cand, reference.instances, cands):
            report.borderline += 1
        else:
            report.fail(2.0, f"extra detection {_describe(cand)} not in the reference")
    return report


def worst_failure(report: ParityReport) -> str:
    """The worst failure: a missing or extra detection first, else the lowest IoU / largest score gap."""
    worst = max(
        ((sev, f"{img.image}: {msg}") for img in report.images for sev, msg in img.problems),
        default=(0.0, ""),
    )
    return worst[1]


def compare_detectors(
    reference: Detector,
    candidate: Detector,
    images: Iterable[tuple[str, np.ndarray]],
    *,
    score_threshold: float,
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Run both detectors on each (name, pixels) image and match their detections."""
    per_image = [
        compare_results(
            reference.detect_pixels(pixels, name=name, score_threshold=score_threshold),
            candidate.detect_pixels(pixels, name=name, score_threshold=score_threshold),
            score_threshold=score_threshold,
            max_detections=candidate.model.max_detections,
            tolerances=tolerances,
        )
        for name, pixels in images
    ]
    return ParityReport(per_image, tolerances or Tolerances())
