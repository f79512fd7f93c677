"""Scoring a model over a dataset: class matching by name, every model kind opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_rt.errors import CrystalRtError, EngineNotFound, InvalidModel
from crystal_rt.evaluate.run import _relabel, label_map, open_model
from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask


def _result(*labels: int) -> DetectionResult:
    mask = InstanceMask(np.ones((2, 2), bool), 0, 0, 4, 4)
    names = {1: "a", 2: "b"}
    instances = [Instance(lab, names[lab], 0.9, (0.0, 0.0, 2.0, 2.0), mask) for lab in labels]
    return DetectionResult(4, 4, instances)


def test_label_map_by_name() -> None:
    assert label_map(("__background__", "crystal"), ("crystal",)) == {1: 1}
    # The model knows more classes than the dataset: those detections are dropped.
    assert label_map(("__background__", "drop", "crystal"), ("crystal",)) == {2: 1}
    with pytest.raises(CrystalRtError, match="no class 'precipitate'"):
        label_map(("__background__", "crystal"), ("crystal", "precipitate"))


def test_relabel_drops_unknown_and_renumbers() -> None:
    result = _relabel(_result(1, 2, 2), {2: 1})
    assert [inst.label for inst in result.instances] == [1, 1]
    same = _result(1)
    assert _relabel(same, {1: 1}) is same


def test_open_model_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="model file not found"):
        open_model(tmp_path / "missing.onnx")
    with pytest.raises(InvalidModel, match="checkpoint not found"):
        open_model(tmp_path / "missing.pt")
    with pytest.raises(EngineNotFound):
        open_model(tmp_path)


def test_every_model_kind_scores_the_same(tiny: object, tmp_path: Path) -> None:
    """Checkpoint (PyTorch), core ONNX and built engine give the same report on the same drops."""
    from crystal_rt.data.coco import load_coco
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.evaluate.run import evaluate_detector

    data = load_coco(write_synthetic(tmp_path, SynthOptions(count=2, seed=5, size=(256, 320))))
    reports = []
    for model in (tiny.checkpoint, tiny.onnx, tiny.engine_dir):  # type: ignore[attr-defined]
        with open_model(model) as detector:
            report, results = evaluate_detector(detector, data, score_threshold=0.05)
        assert len(results) == 2 and report.num_images == 2
        reports.append(report.to_dict())
    for other in reports[1:]:
        for key in ("map50", "map65", "precision", "recall", "num_predictions"):
            assert other[key] == pytest.approx(reports[0][key], abs=0.02), key


@pytest.mark.slow  # heavy: runs in make test-all / CI, not in a plain pytest
def test_every_model_kind_evaluates_in_tiles(tiny: object, tmp_path: Path) -> None:
    """``evaluate --tiles``: checkpoint, core ONNX and engine all detect in the windows asked for."""
    from crystal_rt.cli.main import main
    from crystal_rt.data.coco import load_coco
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.evaluate.run import evaluate_detector
    from crystal_rt.runtime.tiling import Tiling

    annotations = write_synthetic(tmp_path, SynthOptions(count=1, seed=5, size=(256, 320)))
    data = load_coco(annotations)
    for model in (tiny.checkpoint, tiny.onnx, tiny.engine_dir):  # type: ignore[attr-defined]
        with open_model(model, tiling=Tiling("on", tile_size=160)) as detector:
            _, results = evaluate_detector(detector, data, score_threshold=0.05)
        assert results[0].windows > 1, model
        with open_model(model, tiling=Tiling("off")) as detector:
            _, results = evaluate_detector(detector, data, score_threshold=0.05)
        assert results[0].windows == 0, model
    report = tmp_path / "tiled.json"
    args = [
        "evaluate",
        str(tiny.onnx),
        "--data",
        str(annotations),
        "--tile-size",
        "160",
        "--json",
        str(report),
    ]  # type: ignore[attr-defined]
    assert main(args) == 0 and report.is_file()


def test_score_detector_returns_the_truth_it_scored(tiny: object, tmp_path: Path) -> None:
    """``score_detector`` gives evaluate_detector's report and results, and the ground truth per image
    in the same order (what benchmarks/by_size.py and misses.py look at instance by instance)."""
    from crystal_rt.data.coco import load_coco
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.evaluate.metrics import evaluate
    from crystal_rt.evaluate.run import score_detector

    data = load_coco(write_synthetic(tmp_path, SynthOptions(count=2, seed=5, size=(256, 320))))
    with open_model(tiny.onnx) as detector:  # type: ignore[attr-defined]
        report, results, truths = score_detector(detector, data, score_threshold=0.05)
    # The truths returned are the ones scored: evaluating them again gives the same report.
    rescored = evaluate(truths, results, data.class_names, score_threshold=0.05).to_dict()
    for key in ("map50", "map65", "precision", "recall", "num_truth"):
        assert rescored[key] == report.to_dict()[key], key
    assert [t.image_id for t in truths] == [im.id for im in data.images]
    for truth, result, image in zip(truths, results, data.images, strict=True):
        assert (truth.height, truth.width) == (result.height, result.width) == (image.height, image.width)
        masks, _, _ = data.masks(image.id)
        assert len(truth.instances) == int(np.count_nonzero(np.asarray(masks).reshape(len(masks), -1).any(1)))
    assert report.num_truth == sum(len(t.instances) for t in truths)
