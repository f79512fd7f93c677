"""Tests for crystal_rt.evaluate.parity: matching by IoU, tolerances, borderline detections."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_rt.evaluate.parity import (
    ImageParity,
    ParityReport,
    Tolerances,
    box_iou,
    compare_results,
    mask_iou,
    worst_failure,
)
from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask

H, W = 200, 300
THRESHOLD = 0.5


def _disc_mask(box: tuple[float, float, float, float]) -> InstanceMask:
    """An ellipse filling the integer box."""
    x0, y0, x1, y1 = (round(v) for v in box)
    h, w = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:h, 0:w]
    crop = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0
    return InstanceMask(crop, x0, y0, H, W)


def _inst(
    box: tuple[float, float, float, float], score: float, label: int = 1, mask: InstanceMask | None = None
) -> Instance:
    return Instance(
        label=label,
        label_name="crystal" if label == 1 else f"class_{label}",
        score=score,
        box=box,
        mask=mask if mask is not None else _disc_mask(box),
    )


def _result(instances: list[Instance], name: str = "img.png") -> DetectionResult:
    return DetectionResult(width=W, height=H, instances=list(instances), image=name)


def _compare(ref: list[Instance], cand: list[Instance], **kwargs) -> ImageParity:
    kwargs.setdefault("score_threshold", THRESHOLD)
    kwargs.setdefault("max_detections", 100)
    return compare_results(_result(ref), _result(cand), **kwargs)


BOXES = [(10.0, 10.0, 50.0, 50.0), (100.0, 20.0, 160.0, 70.0), (200.0, 120.0, 260.0, 190.0)]
SCORES = [0.95, 0.8, 0.65]


def _reference() -> list[Instance]:
    return [_inst(b, s) for b, s in zip(BOXES, SCORES, strict=True)]


# --------------------------------------------------------------------------- compare_results


def test_identical_results_pass() -> None:
    report = _compare(_reference(), _reference())
    assert report.failures == []
    assert report.matched == 3
    assert report.borderline == 0
    assert report.box_ious == [1.0, 1.0, 1.0]
    assert report.mask_ious == [1.0, 1.0, 1.0]
    assert report.score_diffs == [0.0, 0.0, 0.0]
    assert (report.num_reference, report.num_candidate) == (3, 3)
    assert report.image == "img.png"


def test_shifted_box_fails_box_iou() -> None:
    cand = _reference()
    ref_mask = cand[1].mask
    x1, y1, x2, y2 = cand[1].box
    cand[1] = _inst((x1 + 3, y1 + 2, x2 + 3, y2 + 2), cand[1].score, mask=ref_mask)  # same mask
    report = _compare(_reference(), cand)
    assert report.matched == 3
    assert len(report.failures) == 1, report.failures
    assert "box IoU" in report.failures[0]
    assert "score 0.8000" in report.failures[0]  # describes the reference detection
    assert min(report.box_ious) == pytest.approx(box_iou(BOXES[1], cand[1].box))


def test_changed_mask_fails_mask_iou() -> None:
    cand = _reference()
    m = cand[0].mask
    crop = m.crop.copy()
    crop[: crop.shape[0] // 3] = False  # drop the top third of the mask
    cand[0] = _inst(cand[0].box, cand[0].score, mask=InstanceMask(crop, m.x0, m.y0, H, W))
    report = _compare(_reference(), cand)
    assert len(report.failures) == 1, report.failures
    assert "mask IoU" in report.failures[0]
    assert min(report.mask_ious) < 0.98


def test_small_mask_change_within_tolerance() -> None:
    cand = _reference()
    m = cand[2].mask
    crop = m.crop.copy()
    ys, xs = np.nonzero(crop)
    crop[ys[0], xs[0]] = False  # one pixel of ~3300
    cand[2] = _inst(cand[2].box, cand[2].score, mask=InstanceMask(crop, m.x0, m.y0, H, W))
    report = _compare(_reference(), cand)
    assert report.failures == []
    assert 0.98 < min(report.mask_ious) < 1.0


def test_score_difference_fails() -> None:
    cand = _reference()
    cand[2] = _inst(cand[2].box, cand[2].score + 0.01)
    report = _compare(_reference(), cand)
    assert len(report.failures) == 1, report.failures
    assert "score differs" in report.failures[0]
    assert max(report.score_diffs) == pytest.approx(0.01)


def test_small_score_difference_passes() -> None:
    cand = [_inst(i.box, i.score + 5e-4) for i in _reference()]
    assert _compare(_reference(), cand).failures == []


def test_extra_detection_fails() -> None:
    cand = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), 0.9)]
    report = _compare(_reference(), cand)
    assert report.matched == 3
    assert len(report.failures) == 1, report.failures
    assert "extra detection" in report.failures[0]
    assert report.borderline == 0


def test_missing_detection_fails() -> None:
    cand = _reference()[:2]
    report = _compare(_reference(), cand)
    assert report.matched == 2
    assert len(report.failures) == 1, report.failures
    assert "no match" in report.failures[0]
    assert "score 0.6500" in report.failures[0]


def test_different_label_is_not_a_match() -> None:
    cand = _reference()
    cand[0] = _inst(cand[0].box, cand[0].score, label=2)
    report = _compare(_reference(), cand)
    assert report.matched == 2
    assert sorted(f.split(" ")[0] for f in report.failures) == ["extra", "reference"]


@pytest.mark.parametrize("score", [THRESHOLD, THRESHOLD + 5e-4, THRESHOLD + 9e-4])
def test_borderline_unmatched_is_tolerated(score: float) -> None:
    # Missing on the candidate side ...
    ref = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), score)]
    report = _compare(ref, _reference())
    assert report.failures == []
    assert report.borderline == 1
    # ... or extra on the candidate side.
    report = _compare(_reference(), ref)
    assert report.failures == []
    assert report.borderline == 1


def test_unmatched_just_above_borderline_fails() -> None:
    ref = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), THRESHOLD + 5e-3)]
    report = _compare(ref, _reference())
    assert report.borderline == 0
    assert len(report.failures) == 1
    assert "no match" in report.failures[0]


def test_borderline_at_the_kth_place_when_full() -> None:
    """The other side holds K detections: a detection scoring like its lowest one is borderline."""
    ref = _reference()  # lowest score 0.65
    cand = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), 0.6505)]
    assert _compare(ref, cand, max_detections=3).failures == []
    assert _compare(ref, cand, max_detections=3).borderline == 1
    # Not full (K = 100): the same detection is a real extra.
    assert len(_compare(ref, cand, max_detections=100).failures) == 1


def test_order_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    cand = _reference()
    for _ in range(5):
        order = rng.permutation(len(cand))
        report = _compare(_reference(), [cand[i] for i in order])
        assert report.failures == []
        assert report.matched == 3
        assert report.box_ious == [1.0, 1.0, 1.0]


def test_greedy_matching_prefers_exact_counterparts() -> None:
    """Two overlapping neighbours: each must pair with its exact copy, not the shifted neighbour."""
    a = _inst((10.0, 10.0, 60.0, 60.0), 0.9)
    b = _inst((14.0, 14.0, 64.0, 64.0), 0.85)  # IoU with a ~0.73
    report = _compare([a, b], [b, a])
    assert report.failures == []
    assert report.box_ious == [1.0, 1.0]


def test_near_tie_swap_is_tolerated() -> None:
    ref = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), 0.7)]
    cand = [*_reference(), _inst((20.0, 140.0, 70.0, 190.0), 0.7005)]
    report = _compare(ref, cand)
    assert report.failures == []
    assert report.matched == 3
    assert report.borderline == 2


def test_near_tie_with_distinct_scores_fails() -> None:
    ref = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), 0.7)]
    cand = [*_reference(), _inst((20.0, 140.0, 70.0, 190.0), 0.71)]
    report = _compare(ref, cand)
    assert report.borderline == 0
    assert len(report.failures) == 2
    assert any("no match" in f for f in report.failures)
    assert any("extra detection" in f for f in report.failures)


def test_near_tie_needs_same_label() -> None:
    ref = [*_reference(), _inst((250.0, 10.0, 290.0, 60.0), 0.7, label=1)]
    cand = [*_reference(), _inst((20.0, 140.0, 70.0, 190.0), 0.7, label=2)]
    assert len(_compare(ref, cand).failures) == 2


def test_custom_tolerances() -> None:
    cand = _reference()
    cand[2] = _inst(cand[2].box, cand[2].score + 0.01)
    loose = Tolerances(box_iou=0.9, mask_iou=0.9, score=0.02)
    assert _compare(_reference(), cand, tolerances=loose).failures == []


def test_empty_results() -> None:
    report = _compare([], [])
    assert report.failures == []
    assert report.matched == 0
    report = _compare([], [_inst(BOXES[0], 0.9)])
    assert len(report.failures) == 1


# --------------------------------------------------------------------------- report and worst_failure


def _image(name: str, failures: list[tuple[float, str]]) -> ImageParity:
    img = ImageParity(name, 1, 1)
    for severity, message in failures:
        img.fail(severity, message)
    return img


def test_worst_failure_prefers_missing_over_iou() -> None:
    ref = _reference()
    shifted = _reference()
    x1, y1, x2, y2 = BOXES[0]
    shifted[0] = _inst((x1 + 8, y1, x2 + 8, y2), SCORES[0], mask=ref[0].mask)
    iou_problem = compare_results(
        _result(ref, "a.png"), _result(shifted, "a.png"), score_threshold=0.5, max_detections=100
    )
    missing = compare_results(
        _result(ref, "b.png"), _result(ref[1:], "b.png"), score_threshold=0.5, max_detections=100
    )
    assert iou_problem.failures
    assert missing.failures
    report = ParityReport([iou_problem, missing], Tolerances())
    worst = worst_failure(report)
    assert worst.startswith("b.png: ")
    assert "no match" in worst
    # And in the other order.
    assert "no match" in worst_failure(ParityReport([missing, iou_problem], Tolerances()))


def test_worst_failure_picks_lowest_iou() -> None:
    ref = _reference()
    cand = _reference()
    for k, dx in ((0, 2.0), (1, 9.0), (2, 4.0)):
        x1, y1, x2, y2 = BOXES[k]
        cand[k] = _inst((x1 + dx, y1, x2 + dx, y2), SCORES[k], mask=ref[k].mask)
    img = compare_results(_result(ref), _result(cand), score_threshold=0.5, max_detections=100)
    assert len(img.failures) == 3
    worst = worst_failure(ParityReport([img], Tolerances()))
    lowest = min(img.box_ious)
    assert lowest == pytest.approx(box_iou(BOXES[1], cand[1].box))
    assert f"box IoU {lowest:.4f}" in worst
    assert "score 0.8000" in worst


def test_worst_failure_synthetic_and_empty() -> None:
    report = ParityReport(
        [
            _image("x.png", [(0.05, "mask IoU 0.9500"), (0.2, "box IoU 0.8000")]),
            _image("y.png", [(0.1, "mask IoU 0.9000")]),
        ],
        Tolerances(),
    )
    assert worst_failure(report) == "x.png: box IoU 0.8000"
    assert worst_failure(ParityReport([_image("z.png", [])], Tolerances())) == ""
    assert worst_failure(ParityReport([], Tolerances())) == ""


def test_report_ok_failures_and_summary() -> None:
    good = _compare(_reference(), _reference())
    bad = compare_results(
        _result(_reference(), "bad.png"),
        _result(_reference()[:2], "bad.png"),
        score_threshold=0.5,
        max_detections=100,
    )
    assert ParityReport([good], Tolerances()).ok
    report = ParityReport([good, bad], Tolerances())
    assert not report.ok
    assert report.failures == [f"bad.png: {bad.failures[0]}"]
    summary = report.summary()
    assert summary["images"] == 2
    assert summary["reference_detections"] == 6
    assert summary["candidate_detections"] == 5
    assert summary["matched"] == 5
    assert summary["min_box_iou"] == 1.0
    assert summary["max_score_diff"] == 0.0


# --------------------------------------------------------------------------- box_iou, mask_iou


def test_box_iou_values() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 10, 10), (2, 2, 8, 8)) == pytest.approx(36 / 100)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching
    assert box_iou((0, 0, 10, 10), (30, 30, 40, 40)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == box_iou((5, 5, 15, 15), (0, 0, 10, 10))


def test_box_iou_degenerate() -> None:
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 1.0
    assert box_iou((5.0, 5.0, 5.0, 9.0), (5.0, 5.0, 5.0, 9.0)) == 1.0  # zero width, identical
    assert box_iou((5, 5, 5, 5), (6, 6, 6, 6)) == 0.0
    assert box_iou((5, 5, 5, 9), (5, 5, 5, 8)) == 0.0
    assert box_iou((5, 5, 5, 5), (0, 0, 10, 10)) == 0.0  # a point inside a real box
    assert box_iou([1.0, 2.0, 1.0, 2.0], (1.0, 2.0, 1.0, 2.0)) == 1.0  # list vs tuple


def _mask(crop: np.ndarray, x0: int, y0: int) -> InstanceMask:
    return InstanceMask(np.asarray(crop, dtype=bool), x0, y0, H, W)


def test_mask_iou_disjoint_and_overlapping() -> None:
    a = _mask(np.ones((10, 10)), 0, 0)
    b = _mask(np.ones((10, 10)), 50, 60)
    assert mask_iou(a, b) == 0.0
    c = _mask(np.ones((10, 10)), 5, 0)  # overlaps a in 5 x 10
    assert mask_iou(a, c) == pytest.approx(50 / 150)
    assert mask_iou(c, a) == pytest.approx(50 / 150)
    assert mask_iou(a, a) == 1.0


def test_mask_iou_against_full_masks() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        masks = []
        for _ in range(2):
            h, w = (int(v) for v in rng.integers(1, 30, size=2))
            x0, y0 = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            masks.append(_mask(rng.random((h, w)) < 0.6, x0 // 10, y0 // 10))
        a, b = masks
        fa, fb = a.to_full(), b.to_full()
        union = np.count_nonzero(fa | fb)
        expected = 1.0 if union == 0 else np.count_nonzero(fa & fb) / union
        assert mask_iou(a, b) == pytest.approx(expected)


def test_mask_iou_empty() -> None:
    empty = _mask(np.zeros((0, 0)), 0, 0)
    blank = _mask(np.zeros((4, 4)), 3, 3)
    full = _mask(np.ones((4, 4)), 3, 3)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, blank) == 1.0
    assert mask_iou(empty, full) == 0.0
    assert mask_iou(full, blank) == 0.0


# --------------------------------------------------------------------------- numerical noise
# The case of issue 16 (item 19): a seeded maskrcnn_resnet50_fpn whose scores saturate gives
# boxes a tenth of a pixel wide, whose IoU float rounding takes to 0.9899, and one detection that
# NMS keeps on one backend and drops on the other at an IoU of 0.5 +- 1e-4.


def test_degenerate_boxes_are_judged_by_coordinates() -> None:
    ref = [_inst((10.0, 10.0, 10.1, 40.0), 0.999), *_reference()]
    cand = [_inst((10.0, 10.0, 10.09899, 40.0), 0.999), *_reference()]
    assert box_iou(ref[0].box, cand[0].box) == pytest.approx(0.9899, abs=1e-4)
    report = _compare(ref, cand)
    assert report.failures == [] and report.matched == 4
    strict = _compare(ref, cand, tolerances=Tolerances(box_px=0.0))  # the IoU rule alone: refused
    assert any("box IoU 0.9899 < 0.99" in f for f in strict.failures)
    # A tenth-of-a-pixel box moved by more than 0.05 px is still a different box.
    moved = [_inst((10.06, 10.0, 10.16, 40.0), 0.99), *_reference()]
    assert _compare(ref, moved).failures
    wide = [_inst((10.0, 10.0, 12.0, 40.0), 0.999)]  # 2 px wide, 0.06 px off: the IoU rule applies
    off = [_inst((10.06, 10.0, 12.06, 40.0), 0.999)]
    assert any("0.060 px apart" in f for f in _compare(wide, off).failures)


def test_degenerate_boxes_match_even_below_the_match_iou() -> None:
    ref = [_inst((10.0, 10.0, 10.01, 40.0), 0.99)]
    cand = [_inst((10.006, 10.0, 10.016, 40.0), 0.99)]  # IoU 0.25, 6 thousandths of a pixel apart
    assert box_iou(ref[0].box, cand[0].box) < 0.5
    report = _compare(ref, cand)
    assert report.failures == [] and report.matched == 1


def _shifted(iou: float) -> tuple[float, float, float, float]:
    """A 100 x 100 box at x = dx whose IoU with (0, 0, 100, 100) is ``iou``."""
    dx = 100 * (1 - iou) / (1 + iou)
    return (dx, 0.0, 100 + dx, 100.0)


@pytest.mark.parametrize("side", ["extra", "lost"])
def test_detection_at_an_nms_tie_is_borderline(side: str) -> None:
    a = _inst((0.0, 0.0, 100.0, 100.0), 0.9)
    kept = _inst(_shifted(0.4999), 0.85)  # just under NMS 0.5: kept here, dropped on the other side
    assert box_iou(a.box, kept.box) == pytest.approx(0.4999, abs=1e-6)
    ref, cand = ([a], [a, kept]) if side == "extra" else ([a, kept], [a])
    report = _compare(ref, cand)
    assert report.failures == [] and report.borderline == 1
    far = _inst(_shifted(0.45), 0.85)  # NMS keeps it clearly: missing it is a real difference
    ref, cand = ([a], [a, far]) if side == "extra" else ([a, far], [a])
    failures = _compare(ref, cand).failures
    assert len(failures) == 1 and ("extra detection" in failures[0] or "has no match" in failures[0])
    # At another NMS threshold the same pair is no tie.
    ref, cand = ([a], [a, kept]) if side == "extra" else ([a, kept], [a])
    assert _compare(ref, cand, tolerances=Tolerances(nms_iou=0.7)).failures
