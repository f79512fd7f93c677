"""Tests for crystal_rt.runtime.postprocess: select, box mapping, and mask pasting against torchvision."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crystal_rt.results.detection import InstanceMask
from crystal_rt.runtime.backends.base import CoreOutputs
from crystal_rt.runtime.postprocess import paste_mask, postprocess, select

M = 28
H, W = 150, 190  # paste target for the torchvision comparison


# --------------------------------------------------------------------------- helpers


def _smooth_prob(rng: np.random.Generator) -> np.ndarray:
    """Gaussian-blurred noise mapped to [0, 1] (a realistic mask-head output)."""
    noise = rng.normal(size=(M, M)).astype(np.float32)
    sigma = float(rng.uniform(1.5, 4.0))
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    lo, hi = float(blurred.min()), float(blurred.max())
    return ((blurred - lo) / (hi - lo)).astype(np.float32)


def _blob_prob(rng: np.random.Generator) -> np.ndarray:
    """A sharp-edged ellipse of ones on zeros (bilinear interpolation puts many values at 0.5)."""
    yy, xx = np.mgrid[0:M, 0:M].astype(np.float32)
    cy, cx = rng.uniform(8, 20, size=2)
    ry, rx = rng.uniform(4, 12, size=2)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.float32)


def _random_boxes(rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    boxes: list[tuple[float, float, float, float]] = []
    # Ordinary boxes inside the image.
    for _ in range(26):
        w, h = rng.uniform(3, 80, size=2)
        x1 = rng.uniform(0, W - w)
        y1 = rng.uniform(0, H - h)
        boxes.append((x1, y1, x1 + w, y1 + h))
    # Tiny boxes (< 2 px), some at exact integers, one degenerate.
    for _ in range(6):
        w, h = rng.uniform(0.1, 1.9, size=2)
        x1, y1 = rng.uniform(1, W - 3), rng.uniform(1, H - 3)
        boxes.append((x1, y1, x1 + w, y1 + h))
    boxes += [(10.0, 20.0, 11.0, 21.0), (50.0, 60.0, 50.0, 62.0), (0.0, 0.0, 1.0, 1.0)]
    # Touching the edges (the expanded box then crosses them).
    boxes += [
        (0.0, 0.0, 40.0, 30.0),
        (W - 35.0, H - 25.0, float(W), float(H)),
        (0.0, H - 50.0, 25.5, float(H)),
        (W - 60.3, 0.0, float(W), 44.4),
        (0.0, 0.0, float(W), float(H)),
    ]
    # Crossing the edges.
    for _ in range(6):
        w, h = rng.uniform(20, 90, size=2)
        x1 = rng.uniform(-w + 5, W - 5)
        y1 = rng.choice([rng.uniform(-h + 5, 0), rng.uniform(H - h, H - 5)])
        boxes.append((x1, y1, x1 + w, y1 + h))
    # Large boxes, larger than the image.
    boxes += [
        (-20.0, -15.0, W + 20.0, H + 15.0),
        (-3.7, 10.2, W + 60.1, H - 3.3),
        (5.5, -40.0, 180.25, H + 2.0),
        (12.0, 7.0, 178.0, 144.0),
    ]
    return [tuple(float(np.float32(v)) for v in b) for b in boxes]  # type: ignore[misc]


def _torchvision_paste(probs: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    out = roi_heads.paste_masks_in_image(
        torch.from_numpy(probs[:, None]), torch.from_numpy(boxes), (height, width), padding=1
    )
    return out[:, 0].numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# --------------------------------------------------------------------------- paste_mask vs torchvision


def test_paste_mask_matches_torchvision() -> None:
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(2024)
    boxes = _random_boxes(rng)
    probs = []
    for k in range(len(boxes)):
        probs.append(_blob_prob(rng) if k % 5 == 4 else _smooth_prob(rng))
    # A few special maps: all ones, all zeros, exactly 0.5 everywhere.
    probs[1] = np.ones((M, M), np.float32)
    probs[2] = np.zeros((M, M), np.float32)
    probs[3] = np.full((M, M), 0.5, np.float32)
    prob_arr = np.stack(probs).astype(np.float32)
    box_arr = np.asarray(boxes, dtype=np.float32)
    assert len(boxes) >= 50

    tv_prob = _torchvision_paste(prob_arr, box_arr, H, W)
    mismatched = 0
    compared = 0
    bad: list[str] = []
    for k, box in enumerate(boxes):
        inst = paste_mask(prob_arr[k], box, H, W)
        assert isinstance(inst, InstanceMask)
        assert (inst.image_height, inst.image_width) == (H, W)
        assert inst.crop.dtype == bool
        assert inst.x0 >= 0
        assert inst.y0 >= 0
        assert inst.x0 + inst.crop.shape[1] <= W
        assert inst.y0 + inst.crop.shape[0] <= H
        ours = inst.to_full()
        ref = tv_prob[k] > 0.5
        diff = ours != ref
        compared += int(np.count_nonzero(ours | ref))
        mismatched += int(np.count_nonzero(diff))
        if diff.any():
            worst = float(np.abs(tv_prob[k][diff] - 0.5).max())
            if worst >= 1e-4:
                bad.append(f"box {k} {box}: {np.count_nonzero(diff)} px differ, max |p-0.5| {worst:.3g}")
        iou = _iou(ours, ref)
        if iou < 0.99:
            bad.append(f"box {k} {box}: mask IoU {iou:.4f} (ours {ours.sum()} px, tv {ref.sum()} px)")
    assert not bad, f"{mismatched} mismatched pixels of {compared}:\n" + "\n".join(bad)
    # Sharp blobs put pixels exactly at 0.5; allow those, but only a few overall.
    assert mismatched <= 0.001 * compared + 5, f"{mismatched} mismatched pixels of {compared}"


def test_paste_mask_matches_torchvision_large_image() -> None:
    """Big boxes on a large image (upsampling by > 10x) still match."""
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(99)
    height, width = 700, 900
    boxes = np.array(
        [[12.5, 30.25, 600.75, 690.0], [300.0, 200.0, 900.0, 700.0], [-40.0, -40.0, 450.0, 350.0]],
        dtype=np.float32,
    )
    probs = np.stack([_smooth_prob(rng), _blob_prob(rng), _smooth_prob(rng)]).astype(np.float32)
    tv_prob = _torchvision_paste(probs, boxes, height, width)
    for k in range(len(boxes)):
        ours = paste_mask(probs[k], boxes[k].tolist(), height, width).to_full()
        ref = tv_prob[k] > 0.5
        diff = ours != ref
        assert _iou(ours, ref) >= 0.99
        assert np.all(np.abs(tv_prob[k][diff] - 0.5) < 1e-4), f"{np.count_nonzero(diff)} px differ"


def test_paste_mask_threshold_is_strict() -> None:
    """A map of exactly 0.5 is background everywhere (prob > 0.5, not >=)."""
    inst = paste_mask(np.full((M, M), 0.5, np.float32), (10.0, 10.0, 50.0, 50.0), 100, 100)
    assert inst.area == 0
    assert not inst.to_full().any()


def test_paste_mask_ones_covers_box() -> None:
    inst = paste_mask(np.ones((M, M), np.float32), (20.0, 30.0, 80.0, 60.0), 100, 120)
    full = inst.to_full()
    ys, xs = np.nonzero(full)
    # The padded map crosses 0.5 half a source pixel outside the box edge (within a pixel).
    assert abs(xs.min() - 20) <= 1
    assert abs(xs.max() - 80) <= 1
    assert abs(ys.min() - 30) <= 1
    assert abs(ys.max() - 60) <= 1
    assert full[31:60, 21:80].all()
    assert inst.area == np.count_nonzero(full)


def test_paste_mask_box_outside_image_is_empty() -> None:
    inst = paste_mask(np.ones((M, M), np.float32), (200.0, 10.0, 240.0, 50.0), 100, 120)
    assert inst.area == 0
    assert inst.to_full().shape == (100, 120)
    assert not inst.to_full().any()


# --------------------------------------------------------------------------- select


def _outputs(boxes, scores, labels, masks=None) -> CoreOutputs:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if masks is None:
        masks = np.ones((len(scores), M, M), dtype=np.float32)
    return CoreOutputs(boxes, scores, labels, np.asarray(masks, dtype=np.float32))


def test_select_threshold_padding_and_order() -> None:
    scores = [0.9, 0.0, 0.3, 0.7, 0.5, 0.95, 0.0, 0.49999]
    out = _outputs(np.zeros((8, 4)), scores, np.ones(8))
    assert select(out.scores, 0.5).tolist() == [5, 0, 3, 4]
    assert select(out.scores, 0.8).tolist() == [5, 0]
    assert select(out.scores, 0.96).tolist() == []
    # Threshold 0 keeps everything real, never the padding rows (score 0).
    assert select(out.scores, 0.0).tolist() == [5, 0, 3, 4, 7, 2]


def test_select_ties_keep_order_and_all_padding() -> None:
    out = _outputs(np.zeros((5, 4)), [0.6, 0.8, 0.6, 0.8, 0.6], np.ones(5))
    assert select(out.scores, 0.5).tolist() == [1, 3, 0, 2, 4]
    empty = _outputs(np.zeros((4, 4)), np.zeros(4), np.zeros(4))
    assert select(empty.scores, 0.0).tolist() == []
    assert select(empty.scores, 0.5).tolist() == []


# --------------------------------------------------------------------------- postprocess


CLASS_NAMES = ("__background__", "crystal", "precipitate")


def test_postprocess_maps_boxes_back_and_clips() -> None:
    height, width, size = 300, 600, 256
    scale = size / max(height, width)  # 0.4267; the image occupies rows 0..128 of the canvas
    boxes = [
        [25.6, 12.8, 128.0, 64.0],  # inside: (60, 30, 300, 150)
        [-5.0, -3.0, 51.2, 25.6],  # crosses the top-left corner: clipped to 0
        [200.0, 100.0, 270.0, 140.0],  # crosses right (x > 600) and bottom (y > 300): clipped
        [10.0, 140.0, 50.0, 200.0],  # entirely in the bottom letterbox padding: dropped
        [30.0, 130.0, 60.0, 250.0],  # y1 / scale = 304.7 > 300 as well: dropped
        [1.0, 1.0, 2.0, 2.0],  # padding row (score 0)
        [100.0, 50.0, 120.0, 60.0],  # under threshold
        [64.0, 64.0, 96.0, 96.0],  # label outside the class names
    ]
    scores = [0.8, 0.9, 0.7, 0.95, 0.99, 0.0, 0.2, 0.6]
    labels = [1, 2, 1, 1, 1, 0, 1, 7]
    out = _outputs(boxes, scores, labels)
    instances = postprocess(
        out, scale=scale, height=height, width=width, score_threshold=0.5, class_names=CLASS_NAMES
    )
    assert [inst.score for inst in instances] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert [inst.label for inst in instances] == [2, 1, 1, 7]
    assert [inst.label_name for inst in instances] == ["precipitate", "crystal", "crystal", "7"]
    expected = [
        (0.0, 0.0, 51.2 / scale, 25.6 / scale),
        (25.6 / scale, 12.8 / scale, 128.0 / scale, 64.0 / scale),
        (200.0 / scale, 100.0 / scale, 600.0, 300.0),
        (64.0 / scale, 64.0 / scale, 96.0 / scale, 96.0 / scale),
    ]
    for inst, box in zip(instances, expected, strict=True):
        assert inst.box == pytest.approx(box, abs=1e-3)
        assert all(isinstance(v, float) for v in inst.box)
        assert isinstance(inst.score, float)
        assert isinstance(inst.label, int)
        assert (inst.mask.image_height, inst.mask.image_width) == (height, width)
    assert instances[1].box == pytest.approx((60.0, 30.0, 300.0, 150.0), abs=1e-3)
    assert instances[2].box[2] == 600.0
    assert instances[2].box[3] == 300.0


def test_postprocess_masks_follow_the_mapped_box() -> None:
    """Masks are pasted at original resolution into the mapped, clipped box."""
    height, width = 200, 400
    scale = 128 / 400
    rng = np.random.default_rng(5)
    masks = np.stack([np.ones((M, M)), _smooth_prob(rng), _blob_prob(rng)]).astype(np.float32)
    boxes = [[16.0, 8.0, 48.0, 40.0], [-10.0, 30.0, 60.0, 70.0], [80.0, 20.0, 127.0, 63.0]]
    out = _outputs(boxes, [0.9, 0.8, 0.7], [1, 1, 1], masks)
    instances = postprocess(
        out, scale=scale, height=height, width=width, score_threshold=0.5, class_names=CLASS_NAMES
    )
    assert len(instances) == 3
    for inst, prob in zip(instances, masks, strict=True):
        ref = paste_mask(prob, inst.box, height, width)
        np.testing.assert_array_equal(inst.mask.to_full(), ref.to_full())
    # The all-ones map fills its box (50, 25, 150, 125) in original pixels.
    full = instances[0].mask.to_full()
    ys, xs = np.nonzero(full)
    assert abs(xs.min() - 50) <= 1
    assert abs(xs.max() - 150) <= 1
    assert abs(ys.min() - 25) <= 1
    assert abs(ys.max() - 125) <= 1
    # The clipped box starts at x = 0.
    assert instances[1].box[0] == 0.0


def test_postprocess_nothing_kept() -> None:
    out = _outputs(np.zeros((3, 4)), [0.0, 0.0, 0.0], [0, 0, 0])
    assert (
        postprocess(out, scale=1.0, height=10, width=10, score_threshold=0.5, class_names=CLASS_NAMES) == []
    )


@pytest.mark.parametrize(
    ("src", "dst"), [((1352, 1688), (1024, 1224)), ((1352, 1688), (2028, 2532)), ((50, 70), (50, 70))]
)
def test_nearest_to_image_equals_cv2_nearest_of_the_full_mask(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    """paste_at="resize": a crop pasted in the resized image, scaled to the image on the crop only,
    equals cv2.resize(full mask, INTER_NEAREST) (what CHiMP's coordinates amount to)."""
    import cv2

    from crystal_rt.results.detection import InstanceMask
    from crystal_rt.runtime.postprocess import nearest_to_image

    rng = np.random.default_rng(sum(src) + sum(dst))
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        y0, x0 = int(rng.integers(0, src[0] - h + 1)), int(rng.integers(0, src[1] - w + 1))
        crop = rng.random((h, w)) < 0.6
        mask = InstanceMask(crop, x0, y0, src[0], src[1])
        got = nearest_to_image(mask, dst[0], dst[1])
        want = (
            cv2.resize(mask.to_full().astype(np.uint8), (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST) > 0
        )
        assert np.array_equal(got.to_full(), want)
    empty = nearest_to_image(InstanceMask(np.zeros((3, 3), bool), 5, 5, src[0], src[1]), dst[0], dst[1])
    assert empty.area == 0 and empty.to_full().shape == dst
