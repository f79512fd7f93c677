"""``score_detector`` scores against the right ground truth: expected values derived independently.

A hand-built drop whose AP is worked out by hand below, and synthetic drops scored with
pycocotools' own ``COCO``/``COCOeval`` read straight from the annotation file (no crystal_rt code
between the file and the reference). The detector is a stand-in that returns fixed detections: the
code under test is the scoring (``score_detector`` -> ``CocoDataset.masks`` -> ``truth_from_masks``
-> matching, AP, COCO AP), which runs unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from crystal_rt.data.coco import load_coco
from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask

H, W = 48, 64


@dataclass
class FixedDetector:
    """Stands in for a model: the detections of each image file, given in advance."""

    answers: dict[str, list[tuple[np.ndarray, float]]]
    score_threshold: float = 0.5
    model: Any = field(default_factory=lambda: SimpleNamespace(class_names=("__background__", "crystal")))

    def detect(self, path: Path, *, name: str, score_threshold: float) -> DetectionResult:
        instances = []
        for mask, score in self.answers[Path(path).name]:
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = InstanceMask(mask[y0:y1, x0:x1].copy(), x0, y0, mask.shape[0], mask.shape[1])
            box = (float(x0), float(y0), float(x1), float(y1))
            instances.append(Instance(1, "crystal", score, box, crop))
        return DetectionResult(mask.shape[1], mask.shape[0], instances, image=name)


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _write_dataset(folder: Path, images: dict[str, list[np.ndarray]], height: int, width: int) -> Path:
    """A COCO file (RLE segmentations) and blank PNGs: the ground truth, written independently."""
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "crystal"}]}
    for image_id, (file_name, masks) in enumerate(images.items(), 1):
        (folder / file_name).write_bytes(b"")  # never read: the detector is the stand-in
        coco["images"].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for mask in masks:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def test_hand_built_drop_scores_as_worked_out_by_hand(tmp_path: Path) -> None:
    """Three crystals in the left half of a 64x48 drop; the detector finds two exactly, scores a
    false positive (in the right half, on nothing) between them and misses the third.

    By score: TP (0.9), FP (0.8), TP (0.7); 3 ground-truth instances.
    mAP@0.50 (Matterport): precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3; made non-increasing from
    the end: 1, 2/3, 2/3; AP = 1/3 * 1 + (2/3 - 1/3) * 2/3 = 5/9. The masks are exact (IoU 1), so
    mAP@0.65 is 5/9 too. At the operating point (score >= 0.5): precision 2/3, recall 2/3.
    COCO AP: at every IoU threshold, 101 recall points; 0.00..0.33 (34 points) reach precision 1,
    0.34..0.66 (33 points) precision 2/3, 0.67..1.00 nothing: (34 + 33 * 2/3) / 101 = 56/101.
    """
    from crystal_rt.evaluate.run import score_detector

    truths = [_rect(2, 3, 12, 11), _rect(4, 20, 20, 30), _rect(22, 34, 30, 45)]
    annotations = _write_dataset(tmp_path, {"drop.png": truths}, H, W)
    answers = {"drop.png": [(truths[0], 0.9), (_rect(44, 5, 60, 15), 0.8), (truths[1], 0.7)]}
    report, _, _ = score_detector(FixedDetector(answers), load_coco(annotations))
    assert report.num_truth == 3 and report.num_predictions == 3
    assert report.map50 == pytest.approx(5 / 9)
    assert report.map65 == pytest.approx(5 / 9)
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(2 / 3)
    assert report.coco_segm_ap == pytest.approx(56 / 101)
    assert report.coco_bbox_ap == pytest.approx(56 / 101)


def _pycocotools_reference(
    annotations: Path, answers: dict[str, list[tuple[np.ndarray, float]]]
) -> dict[str, float]:
    """COCOeval AP@[.50:.95] (segm, bbox) with the ground truth read by pycocotools from the file."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        dets = []
        for file_name, found in answers.items():
            for mask, score in found:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                dets.append(
                    {"image_id": ids[file_name], "category_id": 1, "segmentation": rle, "score": score}
                )
        out = {}
        for kind in ("segm", "bbox"):
            given = (
                dets
                if kind == "segm"
                else [{**d, "bbox": [float(v) for v in mask_utils.toBbox(d["segmentation"])]} for d in dets]
            )
            if kind == "bbox":
                given = [{k: v for k, v in d.items() if k != "segmentation"} for d in given]
            coco_eval = COCOeval(gt, gt.loadRes(given), kind)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            out[kind] = float(coco_eval.stats[0])
    return out


def test_synthetic_drops_match_pycocotools_cocoeval(tmp_path: Path) -> None:
    """Synthetic drops (crystals of every shape, not symmetric), detections that are the true masks
    shifted down by 0-2 pixels (IoUs spread over COCO's thresholds), some missed, some false positives:
    ``score_detector``'s COCO AP equals COCOeval's, and the truth it scored is the file's masks."""
    from crystal_rt.data.synthetic import make_drop
    from crystal_rt.evaluate.run import score_detector

    rng = np.random.default_rng(7)
    height, width = 160, 224
    images, answers = {}, {}
    for k, seed in enumerate((11, 12, 13)):
        drop = make_drop(seed, height, width, 8)
        masks = [np.asarray(m, bool) for m in drop.masks if np.asarray(m).any()]
        name = f"drop{k}.png"
        images[name] = masks
        found = []
        for j, mask in enumerate(masks):
            if j % 4 == 3:
                continue  # missed
            shift = int(rng.integers(0, 3))
            found.append((np.roll(mask, shift, axis=0), float(rng.uniform(0.1, 1.0))))
        fp = np.zeros((height, width), bool)
        fp[5 + 7 * k : 15 + 7 * k, width - 20 : width - 6] = True
        found.append((fp, 0.95 - 0.1 * k))  # false positives, scored high
        answers[name] = found
    annotations = _write_dataset(tmp_path, images, height, width)
    report, _, truths = score_detector(FixedDetector(answers), load_coco(annotations))
    reference = _pycocotools_reference(annotations, answers)
    assert report.num_truth == sum(len(m) for m in images.values())
    assert 0.1 < reference["segm"] < 0.9  # a score with room to be wrong both ways
    assert report.coco_segm_ap == pytest.approx(reference["segm"], abs=1e-9)
    assert report.coco_bbox_ap == pytest.approx(reference["bbox"], abs=1e-9)
    for truth, name in zip(truths, images, strict=True):  # the truth scored is the file's, pixel for pixel
        full = [np.zeros((height, width), bool) for _ in truth.instances]
        for canvas, inst in zip(full, truth.instances, strict=True):
            crop = inst.mask.crop
            canvas[
                inst.mask.y0 : inst.mask.y0 + crop.shape[0], inst.mask.x0 : inst.mask.x0 + crop.shape[1]
            ] = crop
        assert [m.tobytes() for m in full] == [m.tobytes() for m in images[name]]


def test_iou_exactly_at_the_threshold_matches(tmp_path: Path) -> None:
    """A detection covering a crystal and as much again beside it: mask IoU exactly 1/2. Matterport
    and COCO both match at IoU >= t, so it is a hit at 0.50 (AP 1) and a miss at 0.65 (AP 0); COCO
    AP: a hit at 0.50 only of its ten thresholds, 1/10."""
    from crystal_rt.evaluate.run import score_detector

    truth = _rect(10, 10, 20, 20)
    annotations = _write_dataset(tmp_path, {"drop.png": [truth]}, H, W)
    answers = {"drop.png": [(_rect(10, 10, 30, 20), 0.9)]}
    report, _, _ = score_detector(FixedDetector(answers), load_coco(annotations))
    assert (report.map50, report.map65) == (1.0, 0.0)
    assert report.coco_segm_ap == pytest.approx(0.1)


def test_operating_point_keeps_a_score_equal_to_the_threshold(tmp_path: Path) -> None:
    """precision and recall count the predictions scoring >= the threshold: at 0.7 the hand-built
    drop's three (0.9 TP, 0.8 FP, 0.7 TP) all count: 2/3 and 2/3; at 0.75, 1/2 and 1/3."""
    from crystal_rt.evaluate.run import score_detector

    truths = [_rect(2, 3, 12, 11), _rect(4, 20, 20, 30), _rect(22, 34, 30, 45)]
    annotations = _write_dataset(tmp_path, {"drop.png": truths}, H, W)
    answers = {"drop.png": [(truths[0], 0.9), (_rect(44, 5, 60, 15), 0.8), (truths[1], 0.7)]}
    data = load_coco(annotations)
    at_07, _, _ = score_detector(FixedDetector(answers), data, score_threshold=0.7)
    assert (at_07.precision, at_07.recall) == pytest.approx((2 / 3, 2 / 3))
    at_075, _, _ = score_detector(FixedDetector(answers), data, score_threshold=0.75)
    assert (at_075.precision, at_075.recall) == pytest.approx((1 / 2, 1 / 3))
