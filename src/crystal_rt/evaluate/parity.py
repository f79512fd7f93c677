"""Backend parity: match two backends' detections by IoU (never elementwise) and check tolerances.

Detections may come out in another order, and near the score threshold or the K-th place one
backend may keep a detection the other drops. Pairs are assigned greedily by decreasing box IoU
(same label, IoU >= 0.5). An unmatched detection is tolerated only when it is borderline: its score
within ``score_tol`` of the threshold, or of the lowest score on the other side when that side
is full (K detections), or one of a pair of near-ties: an unmatched detection on each side, same
label, scores within ``score_tol`` (TopK and NMS may keep either of two equally scored boxes), or
an NMS tie: on its own side its IoU with a higher-scoring detection of the same label is within
``nms_margin`` of the NMS threshold ``nms_iou`` (one backend's rounding puts the pair just over
the threshold and drops it, the other's just under and keeps it). With ``score_ties`` (the export
check) a detection whose score equals, within ``score_tol``, another of its label on its side is
borderline when unmatched, and a matched pair of such detections whose boxes differ is a swap
(TopK and NMS order equal scores arbitrarily; a random model gives dozens at one score).

Degenerate boxes (less than a pixel wide or high, as saturating models give) have IoUs that float
rounding swings by percent: such a pair whose coordinates all agree within ``box_px`` (0.05 px)
passes the box check whatever its IoU; any pair that close is matched.

Masks: :func:`compare_results` compares two results' binary masks (IoU). Where both engines'
outputs are at hand (:func:`compare_outputs`, the export check), masks are judged on what the
engines computed instead: the matched rows' 28 x 28 probabilities (within ``mask_prob``), and both
rows pasted into the reference's box (the box check judges the boxes) compared only on the pixels
where the reference's pasted probability is clear of the 0.5 threshold by ``mask_margin``. Binary
masks swing on noise: a pixel near 0.5 flips, and a box edge near an integer (the paste truncates
the expanded box) shifts a whole mask by a pixel, which turns a random model's striped masks
inside out (a faithful R50-FPN export gave mask IoU 0.55); a perturbed weight or a wrong op
moves the probabilities themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import InputMap
from ..results.detection import DetectionResult, Instance, InstanceMask
from ..runtime.backends.base import CoreOutputs
from ..runtime.postprocess import (
    MASK_THRESHOLD,
    Kept,
    make_instances,
    paste_mask,
    paste_stage,
    select_detections,
)

if TYPE_CHECKING:
    from ..runtime.backends.base import Backend
    from ..runtime.detector import Detector
    from ..spec import ModelSpec, PreprocessSpec

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Tolerances:
    box_iou: float = 0.99
    mask_iou: float = 0.98
    score: float = 1e-3
    box_px: float = 0.05  # coordinates this close are the same box, whatever the IoU
    nms_iou: float = 0.5  # the model's box NMS IoU threshold (torchvision's default)
    nms_margin: float = 1e-3  # an IoU this close to nms_iou is an NMS tie
    #: compare_outputs: the matched rows' 28 x 28 mask probabilities agree within this, on all but
    #: ``mask_prob_fraction`` of an image's matched rows, and within ``mask_prob_max`` on every row
    mask_prob: float = 1e-2
    mask_prob_fraction: float = 0.05
    mask_prob_max: float = 0.25
    #: compare_outputs: pasted pixels whose reference probability is within this of 0.5 are not judged
    mask_margin: float = 0.05
    #: this fraction of an image's detections (rounded down) may be unmatched with no borderline
    #: reason: a proposal at the edge of the RPN's own top-N or NMS on one side only gives a
    #: detection the other lacks (the export check allows 0.02: 2 of 100); 0 by default
    unmatched_fraction: float = 0.0
    #: equal scores: a detection whose score is within ``score`` of another of its label on its side
    #: may be swapped for it (TopK and NMS order equal scores arbitrarily: a random model gives
    #: dozens at one score), so a matched pair of such detections whose boxes differ, or such a
    #: detection unmatched, is borderline (the export check turns this on); off by default
    score_ties: bool = False


#: (severity, message) problems of one matched pair's masks, and the mask IoU for the report
MaskCheck = Callable[[int, int], tuple[float, list[tuple[float, str]]]]


@dataclass
class ImageParity:
    image: str
    num_reference: int
    num_candidate: int
    box_ious: list[float] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)
    mask_prob_diffs: list[float] = field(default_factory=list)  # compare_outputs only
    problems: list[tuple[float, str]] = field(default_factory=list)  # (severity, message)
    borderline: int = 0
    unexplained: int = 0  # unmatched, not borderline, within unmatched_fraction

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
        prob = [v for img in self.images for v in img.mask_prob_diffs]
        return {
            "images": len(self.images),
            "images_without_detections": sum(1 for i in self.images if i.num_reference == 0),
            "reference_detections": sum(i.num_reference for i in self.images),
            "candidate_detections": sum(i.num_candidate for i in self.images),
            "matched": len(box),
            "borderline_unmatched": sum(i.borderline for i in self.images),
            "unexplained_unmatched": sum(i.unexplained for i in self.images),
            "min_box_iou": min(box, default=1.0),
            "min_mask_iou": min(mask, default=1.0),
            "max_score_diff": max(score, default=0.0),
            "max_mask_prob_diff": max(prob, default=0.0),
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


def clear_mask_iou(candidate: InstanceMask, sure: InstanceMask, maybe: InstanceMask) -> float:
    """IoU of ``candidate`` and the reference on the pixels where the reference is clear of the
    threshold: ``sure`` holds the pixels clearly inside (probability > 0.5 + margin), ``maybe`` those
    not clearly outside (> 0.5 - margin); the pixels of ``maybe`` not in ``sure`` are not judged.
    1.0 when no judged pixel is in either mask."""
    masks = (candidate, sure, maybe)
    x0, y0 = min(m.x0 for m in masks), min(m.y0 for m in masks)
    x1 = max(m.x0 + m.crop.shape[1] for m in masks)
    y1 = max(m.y0 + m.crop.shape[0] for m in masks)
    canvas = np.zeros((3, max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    for i, m in enumerate(masks):
        h, w = m.crop.shape
        canvas[i, m.y0 - y0 : m.y0 - y0 + h, m.x0 - x0 : m.x0 - x0 + w] = m.crop
    cand, inside, not_outside = canvas
    union = np.count_nonzero(inside) + np.count_nonzero(cand & ~not_outside)
    return 1.0 if union == 0 else float(np.count_nonzero(cand & inside) / union)


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
    mask_check: MaskCheck | None = None,
) -> ImageParity:
    """Match ``candidate``'s detections to ``reference``'s and check them (module doc). The masks of
    a matched pair (indices into the two results' instances) are judged by ``mask_check`` when
    given, else by the IoU of the binary masks."""
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

    def tied(inst: Instance, own: list[Instance]) -> bool:
        """Another detection of its label on its side has (nearly) its score."""
        return tol.score_ties and any(
            o is not inst and o.label == inst.label and abs(o.score - inst.score) <= tol.score for o in own
        )

    def borderline(inst: Instance, other: list[Instance], own: list[Instance]) -> bool:
        if inst.score - score_threshold <= tol.score or tied(inst, own):
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
        if iou < tol.box_iou and not degenerate and (tied(ref, refs) or tied(cand, cands)):
            report.borderline += 2  # two of a group of equal scores, kept in another order: a swap
            continue
        if mask_check is None:
            m_iou = mask_iou(ref.mask, cand.mask)
            if m_iou < tol.mask_iou:
                report.fail(1.0 - m_iou, f"mask IoU {m_iou:.4f} < {tol.mask_iou} for {_describe(ref)}")
        else:
            m_iou, mask_problems = mask_check(i, j)
            report.problems.extend(mask_problems)
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
    unexplained: list[str] = []
    for ref in lost:
        if borderline(ref, candidate.instances, refs):
            report.borderline += 1
        else:
            unexplained.append(f"reference detection {_describe(ref)} has no match")
    for cand in extra:
        if borderline(cand, reference.instances, cands):
            report.borderline += 1
        else:
            unexplained.append(f"extra detection {_describe(cand)} not in the reference")
    allowed = int(tol.unmatched_fraction * max(len(refs), len(cands)) + 1e-9)
    if len(unexplained) <= allowed:
        report.unexplained = len(unexplained)
    else:
        for message in unexplained:
            report.fail(2.0, message)
    return report


def compare_outputs(
    reference: CoreOutputs,
    candidate: CoreOutputs,
    *,
    mapping: InputMap,
    height: int,
    width: int,
    class_names: Sequence[str],
    score_threshold: float,
    max_detections: int,
    paste_at: str = "image",
    name: str | None = None,
    tolerances: Tolerances | None = None,
) -> ImageParity:
    """Two engines' outputs for the same input (``mapping``: the recipe's map back to the
    ``height`` x ``width`` image): detections selected and pasted as the CPU pipeline does, matched
    and checked as :func:`compare_results` does, but with masks judged on the engines' own output
    (module doc): each matched pair's 28 x 28 probabilities within ``mask_prob``, and the mask IoU
    of both pasted into the reference's box only over the pixels where the reference's pasted
    probability is clear of 0.5 by ``mask_margin``."""
    tol = tolerances or Tolerances()

    def detections(out: CoreOutputs) -> tuple[list[Kept], DetectionResult]:
        kept = select_detections(out.boxes, out.scores, score_threshold, mapping, height, width)
        paste = _paster(out.masks, MASK_THRESHOLD)
        masks = paste_stage(paste, out.boxes, kept, mapping, height, width, paste_at)
        instances = make_instances(kept, masks, out.scores, out.labels, class_names)
        return kept, DetectionResult(width, height, instances, image=name)

    kept_ref, ref_result = detections(reference)
    kept_cand, cand_result = detections(candidate)
    prob_diffs: list[float] = []

    def pasted(prob: np.ndarray, k: Kept, threshold: float) -> InstanceMask:
        """``prob`` pasted into the reference detection ``k``'s box, as the pipeline pastes."""

        def paste(kept: Sequence[Kept], h: int, w: int) -> list[InstanceMask]:
            return [paste_mask(prob, frame.box, h, w, threshold) for frame in kept]

        return paste_stage(paste, reference.boxes, [k], mapping, height, width, paste_at)[0]

    unjudged = 0
    off: list[tuple[float, str]] = []  # rows past mask_prob (within mask_prob_max)

    def check(i: int, j: int) -> tuple[float, list[tuple[float, str]]]:
        nonlocal unjudged
        k = kept_ref[i]
        ref_prob, cand_prob = reference.masks[k.index], candidate.masks[kept_cand[j].index]
        if float(np.abs(reference.boxes[k.index] - candidate.boxes[kept_cand[j].index]).max()) > tol.box_px:
            # The mask head pooled other boxes (the box check judges them): a random model's spiky
            # maps move by more than any tolerance under a shift of a pixel, so not judged here.
            unjudged += 1
            return 1.0, []
        diff = float(np.abs(ref_prob.astype(np.float64) - cand_prob.astype(np.float64)).max())
        prob_diffs.append(diff)
        # Both in the reference's box: the box check judges the boxes, and a box edge at an integer
        # (the paste truncates the expanded box) would shift the whole pasted mask by a pixel.
        sure = pasted(ref_prob, k, MASK_THRESHOLD + tol.mask_margin)
        maybe = pasted(ref_prob, k, MASK_THRESHOLD - tol.mask_margin)
        iou = clear_mask_iou(pasted(cand_prob, k, MASK_THRESHOLD), sure, maybe)
        problems = []
        what = _describe(ref_result.instances[i])
        if diff > tol.mask_prob_max:
            message = f"mask probabilities differ by up to {diff:.2e} > {tol.mask_prob_max} for {what}"
            problems.append((diff, message))
        elif diff > tol.mask_prob:
            off.append((diff, f"mask probabilities differ by up to {diff:.2e} > {tol.mask_prob} for {what}"))
        if iou < tol.mask_iou:
            problems.append(
                (
                    1.0 - iou,
                    f"mask IoU {iou:.4f} < {tol.mask_iou} on the pixels clear of {MASK_THRESHOLD} by "
                    f"{tol.mask_margin} for {what}",
                )
            )
        return iou, problems

    report = compare_results(
        ref_result,
        cand_result,
        score_threshold=score_threshold,
        max_detections=max_detections,
        tolerances=tol,
        mask_check=check,
    )
    report.mask_prob_diffs = prob_diffs
    # A wrong weight or op moves every row's probabilities; float noise through a random model's
    # huge activations moves a few rows' (a faithful R34-FPN: 3 of 249 by up to 0.041).
    if len(off) > tol.mask_prob_fraction * report.matched:
        report.problems.extend(off)
    if unjudged * 2 > report.matched:
        report.fail(
            2.0,
            f"the boxes of {unjudged} of {report.matched} matched detections differ by more than "
            f"{tol.box_px} px in the engine input, so their masks cannot be compared",
        )
    return report


def _paster(masks: np.ndarray, threshold: float) -> Callable[[Sequence[Kept], int, int], list[InstanceMask]]:
    def paste(kept: Sequence[Kept], height: int, width: int) -> list[InstanceMask]:
        return [paste_mask(masks[k.index], k.box, height, width, threshold) for k in kept]

    return paste


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


def compare_backends(
    reference: Backend,
    candidate: Backend,
    images: Iterable[tuple[str, np.ndarray]],
    *,
    model: ModelSpec,
    preprocess: PreprocessSpec,
    score_threshold: float,
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Run both engines on each (name, pixels) image's input (the recipe on the CPU) and compare
    their outputs (:func:`compare_outputs`: masks judged on the probabilities)."""
    from ..runtime.preprocess import preprocess as make_input

    per_image = []
    for name, pixels in images:
        pre = make_input(pixels, preprocess)
        per_image.append(
            compare_outputs(
                reference.infer(pre.tensor),
                candidate.infer(pre.tensor),
                mapping=pre.mapping,
                height=pre.height,
                width=pre.width,
                class_names=model.class_names,
                score_threshold=score_threshold,
                max_detections=model.max_detections,
                paste_at=preprocess.paste_at,
                name=name,
                tolerances=tolerances,
            )
        )
    return ParityReport(per_image, tolerances or Tolerances())
