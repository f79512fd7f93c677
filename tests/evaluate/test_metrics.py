"""Tests for crystal_rt.evaluate.metrics: the paper's mAP, COCO AP, precision/recall, reports, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.evaluate.metrics import (
    EvaluationReport,
    ImageTruth,
    TruthInstance,
    evaluate,
    mask_iou_matrix,
    truth_from_masks,
    write_pr_curve,
)
from crystal_rt.evaluate.parity import mask_iou
from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask

H, W = 64, 96
NAMES = ["crystal", "precipitate"]


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Full-size bool mask of the rectangle [x0, x1) x [y0, y1)."""
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _crop(full: np.ndarray) -> InstanceMask:
    ys, xs = np.nonzero(full)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return InstanceMask(full[y0:y1, x0:x1].copy(), int(x0), int(y0), full.shape[0], full.shape[1])


def _pred(full: np.ndarray, score: float, label: int = 1) -> Instance:
    m = _crop(full)
    h, w = m.crop.shape
    return Instance(label, NAMES[label - 1], score, (m.x0, m.y0, m.x0 + w, m.y0 + h), m)


def _truth(image_id: int, masks: list[np.ndarray], labels: list[int] | None = None) -> ImageTruth:
    stack = np.array(masks, dtype=bool).reshape(-1, H, W)
    return truth_from_masks(image_id, f"img{image_id}.png", stack, np.array(labels or [1] * len(masks)))


def _result(instances: list[Instance], name: str = "img.png") -> DetectionResult:
    return DetectionResult(width=W, height=H, instances=instances, image=name)


A = _rect(5, 5, 25, 25)
B = _rect(40, 10, 70, 40)
C = _rect(10, 40, 30, 60)
FP = _rect(75, 45, 90, 60)


# --------------------------------------------------------------------------- ground truth


def test_truth_from_masks_crops_and_drops_empty() -> None:
    masks = np.array([A, np.zeros((H, W), bool), B])
    truth = truth_from_masks(7, "x.png", masks, np.array([1, 2, 2]), iscrowd=np.array([0, 0, 1]))
    assert (truth.image_id, truth.file_name, truth.height, truth.width) == (7, "x.png", H, W)
    assert [i.label for i in truth.instances] == [1, 2]
    assert [i.iscrowd for i in truth.instances] == [False, True]
    first = truth.instances[0].mask
    assert (first.x0, first.y0, first.crop.shape) == (5, 5, (20, 20))
    assert np.array_equal(first.to_full(), A)
    assert np.array_equal(truth.instances[1].mask.to_full(), B)


def test_truth_from_masks_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        truth_from_masks(1, "x", A, np.array([1]))
    with pytest.raises(ValueError, match="labels"):
        truth_from_masks(1, "x", np.array([A, B]), np.array([1]))


def test_mask_iou_matrix_matches_parity_mask_iou() -> None:
    rng = np.random.default_rng(3)

    def blob() -> InstanceMask:
        h, w = rng.integers(3, 30, 2)
        x0, y0 = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
        return InstanceMask(rng.random((h, w)) < 0.7, x0, y0, H, W)

    preds = [blob() for _ in range(30)]
    truths = [blob() for _ in range(10)]
    got = mask_iou_matrix(preds, truths)
    want = np.array([[mask_iou(p, t) for t in truths] for p in preds])
    assert got.shape == (30, 10)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert mask_iou_matrix([], truths).shape == (0, 10)


# --------------------------------------------------------------------------- hand-computed cases


def test_perfect_predictions_score_one() -> None:
    truths = [_truth(1, [A, B], [1, 2]), _truth(2, [C])]
    preds = [_result([_pred(A, 0.9, 1), _pred(B, 0.8, 2)]), _result([_pred(C, 0.7)])]
    report = evaluate(truths, preds, NAMES)
    for key in ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall"):
        assert getattr(report, key) == pytest.approx(1.0), key
        for name in NAMES:
            assert report.classes[name][key] == pytest.approx(1.0), (name, key)
    assert (report.num_images, report.num_truth, report.num_predictions) == (2, 3, 3)
    assert report.classes["crystal"]["num_truth"] == 2
    assert report.classes["precipitate"]["num_predictions"] == 1


def test_hand_computed_ap_with_a_false_positive_in_between() -> None:
    # Two truths; predictions by score: TP (.9), FP (.8), TP (.7).
    #   precision = [1, 1/2, 2/3], recall = [1/2, 1/2, 1]
    #   padded: p = [0, 1, 1/2, 2/3, 0] -> non-increasing from the end: [1, 1, 2/3, 2/3, 0]
    #           r = [0, 1/2, 1/2, 1, 1]; recall changes at indices 1 and 3:
    #   AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 0.8333...
    truths = [_truth(1, [A, B])]
    preds = [_result([_pred(A, 0.9), _pred(FP, 0.8), _pred(B, 0.7)])]
    report = evaluate(truths, preds, NAMES)
    assert report.map50 == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert report.map65 == pytest.approx(5 / 6)
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(1.0)


def test_best_f1_threshold() -> None:
    # Same case: keeping >= .9 gives P 1, R 1/2 (F1 2/3); >= .8 gives P 1/2, R 1/2 (F1 1/2);
    # >= .7 gives P 2/3, R 1 (F1 0.8): the best threshold is 0.7.
    truths = [_truth(1, [A, B])]
    preds = [_result([_pred(A, 0.9), _pred(FP, 0.8), _pred(B, 0.7)])]
    best = evaluate(truths, preds, NAMES).best_f1
    assert best["score_threshold"] == pytest.approx(0.7)
    assert best["f1"] == pytest.approx(0.8)
    assert (best["precision"], best["recall"]) == pytest.approx((2 / 3, 1.0))
    # Ties: two predictions with the same score are kept or dropped together.
    preds = [_result([_pred(A, 0.9), _pred(FP, 0.9)])]
    best = evaluate(truths, preds, NAMES).best_f1
    assert best["precision"] == pytest.approx(0.5) and best["recall"] == pytest.approx(0.5)
    assert evaluate(truths, [_result([])], NAMES).best_f1 == {}


def test_prediction_order_does_not_matter() -> None:
    truths = [_truth(1, [A, B])]
    shuffled = [_result([_pred(B, 0.7), _pred(A, 0.9), _pred(FP, 0.8)])]
    assert evaluate(truths, shuffled, NAMES).map50 == pytest.approx(5 / 6)


def test_iou_0_6_counts_at_0_50_but_not_at_0_65() -> None:
    truth = _rect(10, 10, 20, 20)  # 100 pixels
    inside = _rect(10, 10, 16, 20)  # 60 pixels inside it: IoU 0.6
    report = evaluate([_truth(1, [truth])], [_result([_pred(inside, 0.9)])], NAMES)
    assert report.map50 == pytest.approx(1.0)
    assert report.map65 == pytest.approx(0.0)
    assert report.precision == pytest.approx(1.0)  # the operating point matches at IoU 0.5
    assert report.pr_curves["all"][0.5][1].tolist() == [1.0]
    assert report.pr_curves["all"][0.65][1].tolist() == [0.0]


def test_label_mismatch_is_not_a_match() -> None:
    report = evaluate([_truth(1, [A], [1])], [_result([_pred(A, 0.9, label=2)])], NAMES)
    assert report.map50 == 0.0
    assert report.precision == 0.0
    assert report.recall == 0.0
    assert report.classes["crystal"]["map50"] == 0.0
    assert math.isnan(report.classes["precipitate"]["map50"])  # no truth of that class
    assert report.classes["precipitate"]["precision"] == 0.0


def test_second_prediction_cannot_reuse_a_matched_truth() -> None:
    report = evaluate([_truth(1, [A])], [_result([_pred(A, 0.9), _pred(A, 0.8)])], NAMES)
    assert report.map50 == pytest.approx(1.0)  # the duplicate comes after recall reached 1
    assert report.precision == pytest.approx(0.5)


def test_empty_predictions_score_zero() -> None:
    report = evaluate([_truth(1, [A, B]), _truth(2, [C])], [_result([]), _result([])], NAMES)
    assert report.map50 == 0.0
    assert report.map65 == 0.0
    assert report.coco_segm_ap == 0.0
    assert report.coco_bbox_ap == 0.0
    assert report.recall == 0.0
    assert math.isnan(report.precision)
    assert report.num_predictions == 0
    assert report.pr_curves["all"][0.5][0].size == 0


def test_no_truth_at_all_gives_nan() -> None:
    report = evaluate([_truth(1, [])], [_result([_pred(A, 0.9)])], NAMES)
    assert math.isnan(report.map50)
    assert math.isnan(report.coco_segm_ap)
    assert math.isnan(report.recall)
    assert report.precision == 0.0


def test_images_without_truth_are_skipped_for_map_but_count_as_false_positives() -> None:
    truths = [_truth(1, [A]), _truth(2, [])]
    preds = [_result([_pred(A, 0.9)]), _result([_pred(B, 0.95)])]
    report = evaluate(truths, preds, NAMES)
    assert report.map50 == pytest.approx(1.0)
    assert report.precision == pytest.approx(0.5)
    assert report.recall == pytest.approx(1.0)
    assert report.coco_segm_ap < 1.0  # COCO pools over images: the FP ranks first
    assert report.num_images == 2


def test_score_threshold_only_affects_precision_and_recall() -> None:
    truths = [_truth(1, [A, B])]
    preds = [_result([_pred(A, 0.9), _pred(B, 0.3)])]
    report = evaluate(truths, preds, NAMES, score_threshold=0.5)
    assert report.map50 == pytest.approx(1.0)
    assert report.precision == pytest.approx(1.0)
    assert report.recall == pytest.approx(0.5)
    assert evaluate(truths, preds, NAMES, score_threshold=0.2).recall == pytest.approx(1.0)


def test_per_class_numbers_on_two_classes() -> None:
    # img1: A (crystal), B (precipitate); img2: C (crystal).
    # Predictions: img1 A crystal .9 (TP), B precipitate .6 (TP);
    #              img2 FP precipitate .95, C crystal .4 (TP, below the operating threshold).
    truths = [_truth(1, [A, B], [1, 2]), _truth(2, [C], [1])]
    preds = [
        _result([_pred(A, 0.9, 1), _pred(B, 0.6, 2)]),
        _result([_pred(FP, 0.95, 2), _pred(C, 0.4, 1)]),
    ]
    report = evaluate(truths, preds, NAMES, score_threshold=0.5)
    crystal, precipitate = report.classes["crystal"], report.classes["precipitate"]
    # crystal: img1 AP 1, img2 AP 1 (only C is a crystal prediction there).
    assert crystal["map50"] == pytest.approx(1.0)
    assert crystal["precision"] == pytest.approx(1.0)  # A only (C scores .4)
    assert crystal["recall"] == pytest.approx(0.5)
    assert crystal["coco_segm_ap"] == pytest.approx(1.0)
    assert (crystal["num_truth"], crystal["num_predictions"]) == (2, 2)
    # precipitate: only img1 has that truth (AP 1); img2's FP is skipped for mAP but not for
    # precision (B TP, FP -> 1/2) nor for COCO AP (FP .95 ranks above B: precision 1/2 at every recall).
    assert precipitate["map50"] == pytest.approx(1.0)
    assert precipitate["precision"] == pytest.approx(0.5)
    assert precipitate["recall"] == pytest.approx(1.0)
    assert precipitate["coco_segm_ap"] == pytest.approx(0.5)
    assert precipitate["coco_bbox_ap"] == pytest.approx(0.5)
    assert (precipitate["num_truth"], precipitate["num_predictions"]) == (1, 2)
    # all classes: img1 AP 1; img2 by score FP, TP over 1 truth:
    #   p = [0, 0, 1/2, 0] -> [1/2, 1/2, 1/2, 0], r = [0, 0, 1, 1] -> AP = 1 * 1/2.
    assert report.map50 == pytest.approx((1.0 + 0.5) / 2)
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(2 / 3)
    assert report.coco_segm_ap == pytest.approx(0.75)
    # dataset-level PR curve of "all" at 0.5: by score FP(.95), A(.9), B(.6), C(.4).
    recall, precision = report.pr_curves["all"][0.5]
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [0, 1 / 2, 2 / 3, 3 / 4])
    assert set(report.pr_curves) == {"all", "crystal", "precipitate"}


def test_crowd_truth_is_ignored_for_map() -> None:
    masks = np.array([A, B])
    truth = truth_from_masks(1, "x", masks, np.array([1, 1]), iscrowd=np.array([False, True]))
    report = evaluate([truth], [_result([_pred(A, 0.9)])], NAMES)
    assert report.num_truth == 1
    assert report.map50 == pytest.approx(1.0)
    assert report.recall == pytest.approx(1.0)
    assert report.coco_segm_ap == pytest.approx(1.0)


def test_mismatches_raise() -> None:
    truths = [_truth(1, [A])]
    with pytest.raises(ValueError, match="prediction results"):
        evaluate(truths, [], NAMES)
    small = DetectionResult(width=W // 2, height=H, instances=[])
    with pytest.raises(ValueError, match="ground truth is"):
        evaluate(truths, [small], NAMES)
    good = _pred(A, 0.9, 1)
    unknown = Instance(3, "class_3", 0.9, good.box, good.mask)
    with pytest.raises(ValueError, match="label 3"):
        evaluate(truths, [_result([unknown])], NAMES)


# --------------------------------------------------------------------------- Matterport cross-check


def _matterport_compute_ap(
    gt_masks: np.ndarray,  # (H, W, N) as Matterport stores them
    gt_class_ids: np.ndarray,
    pred_masks: np.ndarray,  # (H, W, P)
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    iou_threshold: float,
) -> float:
    """Matterport Mask R-CNN utils.compute_matches + compute_ap, transcribed (IoU in float64)."""
    indices = np.argsort(pred_scores)[::-1]
    pred_class_ids = pred_class_ids[indices]
    pred_masks = pred_masks[..., indices]
    # compute_overlaps_masks (float64 here: Matterport's float32 puts e.g. 13/20 just below 0.65)
    if pred_masks.shape[-1] == 0 or gt_masks.shape[-1] == 0:
        overlaps = np.zeros((pred_masks.shape[-1], gt_masks.shape[-1]))
    else:
        m1 = np.reshape(pred_masks > 0.5, (-1, pred_masks.shape[-1])).astype(np.float64)
        m2 = np.reshape(gt_masks > 0.5, (-1, gt_masks.shape[-1])).astype(np.float64)
        inter = m1.T @ m2
        union = m1.sum(axis=0)[:, None] + m2.sum(axis=0)[None, :] - inter
        overlaps = inter / union
    pred_match = -1 * np.ones([pred_masks.shape[-1]])
    gt_match = -1 * np.ones([gt_masks.shape[-1]])
    for i in range(pred_masks.shape[-1]):
        sorted_ixs = np.argsort(overlaps[i])[::-1]
        low_score_idx = np.where(overlaps[i, sorted_ixs] < 0.0)[0]
        if low_score_idx.size > 0:
            sorted_ixs = sorted_ixs[: low_score_idx[0]]
        for j in sorted_ixs:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
    recalls = np.cumsum(pred_match > -1).astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])
    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    return float(np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices]))


def _random_blob(rng: np.random.Generator, near: np.ndarray | None = None) -> np.ndarray:
    """An ellipse, or a copy of ``near`` shifted by a few pixels with a few pixels flipped."""
    if near is not None:
        dy, dx = rng.integers(-2, 3, 2)
        m = np.roll(near, (int(dy), int(dx)), axis=(0, 1))
        m ^= rng.random(m.shape) < 0.002
        return m
    cy, cx = rng.uniform(5, H - 5), rng.uniform(5, W - 5)
    ry, rx = rng.uniform(3, 12, 2)
    yy, xx = np.mgrid[0:H, 0:W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _random_dataset(seed: int, num_images: int) -> list[tuple[np.ndarray, np.ndarray, list[Instance]]]:
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(num_images):
        n = int(rng.integers(0, 7))
        blobs: list[np.ndarray] = []
        for _ in range(n):  # some truths overlap a previous one: a prediction then overlaps both
            blobs.append(_random_blob(rng, blobs[-1] if blobs and rng.random() < 0.4 else None))
        gts = np.array(blobs, dtype=bool).reshape(n, H, W)
        labels = rng.integers(1, 3, n)
        preds: list[Instance] = []
        for k in range(n):
            for _ in range(int(rng.integers(0, 3))):  # missed, found, or found twice
                label = int(labels[k]) if rng.random() > 0.15 else 3 - int(labels[k])
                preds.append(_pred(_random_blob(rng, gts[k]), 0.0, label))
        preds += [_pred(_random_blob(rng), 0.0, int(rng.integers(1, 3))) for _ in range(rng.integers(0, 4))]
        scores = rng.permutation(len(preds)) / max(1, len(preds)) * 0.9 + 0.05  # distinct
        preds = [
            Instance(p.label, p.label_name, float(s), p.box, p.mask)
            for p, s in zip(preds, scores, strict=True)
        ]
        data.append((gts, labels, preds))
    return data


def test_per_image_ap_matches_matterport_compute_ap_on_random_data() -> None:
    data = _random_dataset(seed=2024, num_images=50)
    truths = [truth_from_masks(k, f"r{k}", g, lab) for k, (g, lab, _) in enumerate(data)]
    results = [_result(p) for _, _, p in data]
    expected: dict[float, list[float]] = {0.5: [], 0.65: []}
    expected_class: dict[float, dict[int, list[float]]] = {0.5: {1: [], 2: []}, 0.65: {1: [], 2: []}}
    for truth, result, (gts, labels, preds) in zip(truths, results, data, strict=True):
        pred_masks = np.stack([p.mask.to_full() for p in preds], axis=-1) if preds else np.zeros((H, W, 0))
        pred_labels = np.array([p.label for p in preds], dtype=int)
        pred_scores = np.array([p.score for p in preds])
        gt_masks = np.moveaxis(gts, 0, -1)
        single = evaluate([truth], [result], NAMES) if len(gts) else None
        for t in (0.5, 0.65):
            if len(gts):
                ap = _matterport_compute_ap(gt_masks, labels, pred_masks, pred_labels, pred_scores, t)
                expected[t].append(ap)
                assert single is not None
                # Matterport divides recall in float32: agree to ~1e-8
                assert (single.map50 if t == 0.5 else single.map65) == pytest.approx(ap, abs=1e-6)
            for c in (1, 2):
                if np.any(labels == c):
                    keep, gkeep = pred_labels == c, labels == c
                    expected_class[t][c].append(
                        _matterport_compute_ap(
                            gt_masks[..., gkeep],
                            labels[gkeep],
                            pred_masks[..., keep],
                            pred_labels[keep],
                            pred_scores[keep],
                            t,
                        )
                    )
    report = evaluate(truths, results, NAMES)
    assert 0.0 < report.map50 < 1.0  # the random data is neither trivial nor hopeless
    assert report.map50 == pytest.approx(float(np.mean(expected[0.5])), abs=1e-6)
    assert report.map65 == pytest.approx(float(np.mean(expected[0.65])), abs=1e-6)
    for c, name in ((1, "crystal"), (2, "precipitate")):
        assert report.classes[name]["map50"] == pytest.approx(float(np.mean(expected_class[0.5][c])))
        assert report.classes[name]["map65"] == pytest.approx(float(np.mean(expected_class[0.65][c])))


# --------------------------------------------------------------------------- COCO AP


def test_coco_segm_ap_is_one_for_perfect_and_drops_for_a_shifted_mask() -> None:
    truths = [_truth(1, [A, B]), _truth(2, [C])]
    perfect = evaluate(truths, [_result([_pred(A, 0.9), _pred(B, 0.8)]), _result([_pred(C, 0.7)])], NAMES)
    assert perfect.coco_segm_ap == pytest.approx(1.0)
    assert perfect.coco_bbox_ap == pytest.approx(1.0)
    shifted_b = np.roll(B, 4, axis=1)  # IoU 26/34 = 0.76: a hit at .50-.75, a miss above
    shifted = evaluate(
        truths, [_result([_pred(A, 0.9), _pred(shifted_b, 0.8)]), _result([_pred(C, 0.7)])], NAMES
    )
    assert shifted.coco_segm_ap < 1.0
    assert shifted.coco_bbox_ap < 1.0
    assert shifted.map50 == pytest.approx(1.0)


# --------------------------------------------------------------------------- report output


def _two_class_report() -> EvaluationReport:
    truths = [_truth(1, [A, B], [1, 1]), _truth(2, [C])]
    preds = [_result([_pred(A, 0.9), _pred(FP, 0.8, 2)]), _result([_pred(C, 0.7)])]
    return evaluate(truths, preds, NAMES)


def test_to_dict_is_json_ready() -> None:
    report = _two_class_report()
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)  # NaN must have become null
    assert json.loads(text) == data
    required = {
        "map50",
        "map65",
        "coco_segm_ap",
        "coco_bbox_ap",
        "precision",
        "recall",
        "classes",
        "num_images",
        "num_truth",
        "num_predictions",
        "score_threshold",
        "definitions",
    }
    assert required <= set(data)
    assert set(data["classes"]) == set(NAMES)
    for entry in data["classes"].values():
        assert set(entry) == {
            "map50",
            "map65",
            "coco_segm_ap",
            "coco_bbox_ap",
            "precision",
            "recall",
            "num_truth",
            "num_predictions",
        }
    assert data["classes"]["precipitate"]["map50"] is None  # no precipitate truth
    assert data["classes"]["crystal"]["num_truth"] == 3
    assert isinstance(data["num_truth"], int)
    for key in ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall"):
        assert isinstance(data["definitions"][key], str)
        assert type(data[key]) is float


def test_write_pr_curve_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = _two_class_report()
    out = write_pr_curve(report, tmp_path / "plots" / "pr.png")
    assert out == tmp_path / "plots" / "pr.png"
    image = cv2.imread(str(out))
    assert image is not None
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # two panels side by side
    assert not list(out.parent.glob(".*.tmp"))


def test_truth_instance_is_constructible_directly() -> None:
    inst = TruthInstance(1, _crop(A))
    truth = ImageTruth(5, "direct.png", H, W, [inst])
    report = evaluate([truth], [_result([_pred(A, 0.9)])], NAMES)
    assert report.map50 == pytest.approx(1.0)
    assert report.coco_segm_ap == pytest.approx(1.0)


def test_matched_truths_is_the_greedy_match() -> None:
    """Each prediction takes the best unmatched truth of its label at IoU >= t; greedy_match is that."""
    from crystal_rt.evaluate.matching import greedy_match, matched_truths

    ious = np.array([[0.9, 0.6, 0.0], [0.8, 0.7, 0.0], [0.0, 0.0, 0.4], [0.95, 0.0, 0.0]])
    preds, truths = np.array([1, 1, 1, 2]), np.array([1, 1, 1])
    match = matched_truths(ious, preds, truths, 0.5)
    assert match.tolist() == [0, 1, -1, -1]  # the third is below t, the fourth has another label
    assert (greedy_match(ious, preds, truths, 0.5) == (match >= 0)).all()
    assert matched_truths(np.zeros((0, 2)), preds[:0], truths[:2], 0.5).tolist() == []
