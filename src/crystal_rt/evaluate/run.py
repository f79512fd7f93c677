"""Run a detector over an annotated dataset and score it (``crystal-rt evaluate``, training validation)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidDataset, InvalidModel
from ..runtime.artifacts import MANIFEST_SUFFIX

if TYPE_CHECKING:
    from ..data.coco import CocoDataset
    from ..results.detection import DetectionResult
    from ..runtime.detector import Detector
    from ..runtime.pipeline import StagePolicy
    from ..runtime.tiling import Tiling
    from .metrics import EvaluationReport
    from .truth import ImageTruth

# Detections down to this score are kept for the AP metrics (the operating threshold is separate).
AP_SCORE_THRESHOLD = 0.05
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def open_model(
    model: str | os.PathLike[str],
    *,
    threads: int | None = None,
    stages: StagePolicy = "auto",
    tiling: Tiling | None = None,
) -> Detector:
    """An engine (folder, manifest, prefix), a core ONNX, or a PyTorch checkpoint, as a Detector
    (``stages`` matters for engines with device stages: TensorRT; ``tiling`` detects in tiles at
    the engine's scale, as ``detect --tiles`` does)."""
    from ..runtime.detector import Detector

    path = Path(model)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from .._lazy import require

        for module in ("torch", "torchvision"):  # one sentence without the export extra
            require(module, "Evaluating a PyTorch checkpoint")
        from ..models.reference import detector_from_checkpoint

        detector = detector_from_checkpoint(path)
    elif path.suffix.lower() == ".onnx" and not path.with_suffix(MANIFEST_SUFFIX).exists():
        if not path.is_file():
            raise InvalidModel("model file not found", path=path)
        detector = Detector.from_onnx(path, threads=threads)
    else:
        detector = Detector.load(path, threads=threads, stages=stages)
    detector.tiling = None if tiling is None or tiling.mode == "off" else tiling
    return detector


def detect_dataset(
    detector: Detector,
    dataset: CocoDataset,
    image_ids: Sequence[int] | None = None,
    *,
    on_image: Callable[[], None] | None = None,
) -> list[DetectionResult]:
    ids = list(image_ids) if image_ids is not None else [im.id for im in dataset.images]
    results = []
    for image_id in ids:
        path = dataset.image_path(image_id)
        results.append(detector.detect(path, name=str(path), score_threshold=AP_SCORE_THRESHOLD))
        if on_image is not None:
            on_image()
    return results


def evaluate_detector(
    detector: Detector,
    dataset: CocoDataset,
    image_ids: Sequence[int] | None = None,
    *,
    score_threshold: float | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[EvaluationReport, list[DetectionResult]]:
    """Detect every image (at the AP threshold) and score against the dataset's masks."""
    report, results, _ = score_detector(
        detector, dataset, image_ids, score_threshold=score_threshold, on_image=on_image
    )
    return report, results


def score_detector(
    detector: Detector,
    dataset: CocoDataset,
    image_ids: Sequence[int] | None = None,
    *,
    score_threshold: float | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[EvaluationReport, list[DetectionResult], list[ImageTruth]]:
    """:func:`evaluate_detector`, also returning the ground truth it scored against (in the same
    order as the results), for analyses that look at each instance (``benchmarks/by_size.py``)."""
    from .metrics import evaluate, truth_from_masks

    ids = list(image_ids) if image_ids is not None else [im.id for im in dataset.images]
    remap = label_map(detector.model.class_names, dataset.class_names)
    results = [_relabel(r, remap) for r in detect_dataset(detector, dataset, ids, on_image=on_image)]
    truths = []
    for image_id in ids:
        masks, labels, crowd = dataset.masks(image_id)
        truths.append(truth_from_masks(image_id, dataset.image(image_id).file_name, masks, labels, crowd))
    threshold = detector.score_threshold if score_threshold is None else score_threshold
    report = evaluate(truths, results, dataset.class_names, score_threshold=threshold)
    return report, results, truths


def label_map(model_names: Sequence[str], dataset_names: Sequence[str]) -> dict[int, int]:
    """Model label -> dataset label, matched by class name (model_names[0] is the background).

    Model classes the dataset does not have map to nothing (their detections are dropped); a
    dataset class the model does not know is an error, since its AP would be meaningless.
    """
    positions = {name: i + 1 for i, name in enumerate(dataset_names)}
    known = set(model_names[1:])
    missing = [name for name in dataset_names if name not in known]
    if missing:
        raise InvalidDataset(
            f"the model has no class {missing[0]!r} (model classes: {', '.join(model_names[1:])}; "
            f"dataset classes: {', '.join(dataset_names)})"
        )
    return {i: positions[name] for i, name in enumerate(model_names) if i > 0 and name in positions}


def _relabel(result: DetectionResult, remap: dict[int, int]) -> DetectionResult:
    if all(remap.get(inst.label) == inst.label for inst in result.instances):
        return result
    instances = [
        dataclasses.replace(inst, label=remap[inst.label]) for inst in result.instances if inst.label in remap
    ]
    return dataclasses.replace(result, instances=instances)
