"""Training end to end on a tiny synthetic set: checkpoints export, resume continues, evaluate scores.

Small crops, a handful of steps: this checks the plumbing (data cache, crops, heads, validation,
checkpoint format, resume), not accuracy; benchmarks/clahe_ablation.py and the demo model's
script measure accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic

    root = tmp_path_factory.mktemp("synth")
    return write_synthetic(root, SynthOptions(count=5, seed=3, size=(192, 224), max_crystals=5))


def _config(data: Path, out: Path, **overrides: object) -> object:
    from crystal_rt.train.loop import TrainConfig

    options: dict[str, object] = {
        "data": str(data),
        "images": None,
        "output": str(out),
        "input_size": 128,
        "crop_size": 64,
        "batch_size": 2,
        "iterations": 3,
        "val_every": 2,
        "val_fraction": 0.2,
        "slim": True,
        "warmup": 1,
        "threads": 2,
    }
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


def test_sample_crop_keeps_visible_instances(dataset: Path) -> None:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.spec import PreprocessSpec
    from crystal_rt.train.augment import AugmentConfig, sample_crop
    from crystal_rt.train.data import cache_image

    data = load_coco(dataset)
    item = cache_image(data, data.images[0].id, PreprocessSpec.paper(input_size=128))
    assert item.pixels.dtype == np.float16 and max(item.shape) == 128
    assert len(item.rles) == len(item.labels) == len(item.areas) > 0
    rng = np.random.default_rng(0)
    for _ in range(10):
        sample = sample_crop(rng, item, AugmentConfig(crop_size=64))
        assert sample.image.shape == (3, 64, 64) and sample.image.dtype == np.float32
        assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
        assert sample.masks.shape == (len(sample.boxes), 64, 64)
        for box, mask in zip(sample.boxes, sample.masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert (box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).all()


def test_rotation_and_blur_keep_boxes_on_their_masks(dataset: Path) -> None:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.spec import PreprocessSpec
    from crystal_rt.train.augment import AugmentConfig, sample_crop
    from crystal_rt.train.data import cache_image

    data = load_coco(dataset)
    item = cache_image(data, data.images[0].id, PreprocessSpec.paper(input_size=128))
    rng = np.random.default_rng(1)
    heavy = AugmentConfig(crop_size=64, scale_range=(0.5, 2.0), rotate=180.0, blur=1.0)
    kept = 0
    for _ in range(20):
        sample = sample_crop(rng, item, heavy)
        assert sample.image.shape == (3, 64, 64) and 0.0 <= sample.image.min() <= sample.image.max() <= 1.0
        for box, mask in zip(sample.boxes, sample.masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert (box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).all()
        kept += len(sample.boxes)
    assert kept > 0


def test_clahe_on_off_augmentation(dataset: Path) -> None:
    """With ``clahe_off`` the cache keeps the image without CLAHE too, and that share of crops uses it."""
    from crystal_rt.data.coco import load_coco
    from crystal_rt.spec import PreprocessSpec
    from crystal_rt.train.augment import AugmentConfig, sample_crop
    from crystal_rt.train.data import cache_image

    data = load_coco(dataset)
    spec = PreprocessSpec.paper(input_size=128)
    item = cache_image(data, data.images[0].id, spec, keep_plain=True)
    assert item.plain is not None and item.plain.shape == item.pixels.shape
    assert np.abs(item.plain.astype(np.float32) - item.pixels.astype(np.float32)).mean() > 0.01
    assert cache_image(data, data.images[0].id, spec).plain is None
    assert (
        cache_image(data, data.images[0].id, spec.with_overrides(clahe=False), keep_plain=True).plain is None
    )
    plain = AugmentConfig(
        crop_size=64,
        clahe_off=1.0,
        flips=False,
        rot90=False,
        noise=0.0,
        brightness=0.0,
        contrast=(1.0, 1.0),
        gamma=(1.0, 1.0),
        scale_range=(1.0, 1.0),
        object_centred=0.0,
    )
    on = AugmentConfig(**{**plain.__dict__, "clahe_off": 0.0})
    a = sample_crop(np.random.default_rng(5), item, plain)
    b = sample_crop(np.random.default_rng(5), item, on)
    assert not np.allclose(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)


def test_finetune_recipe_values_and_its_start(tmp_path: Path) -> None:
    from crystal_rt.errors import InvalidOption
    from crystal_rt.train.loop import TrainConfig

    with pytest.raises(InvalidOption, match="pass --init"):
        TrainConfig.for_recipe("finetune", data="d.json", images=None, output=str(tmp_path))
    with pytest.raises(InvalidOption, match="unknown training recipe"):
        TrainConfig.for_recipe("quick", data="d.json", images=None, output=str(tmp_path))
    config = TrainConfig.for_recipe(
        "finetune", data="d.json", images=None, output=str(tmp_path), init="m.onnx", lr=None, batch_size=2
    )
    assert config.freeze_backbone and config.lr == 0.005 and config.batch_size == 2  # given beats recipe
    assert config.max_minutes == 10.0 and config.patience == 4 and config.rotate == 180.0
    assert config.clahe_off == 0.2 and config.augment().clahe_off == 0.2
    assert TrainConfig.for_recipe("default", data="d", images=None, output="o") == TrainConfig(
        data="d", images=None, output="o"
    )


def test_finetune_stores_the_best_f1_threshold(dataset: Path, tmp_path: Path) -> None:
    """pick_threshold (finetune's default, ``--score-threshold auto``): best.pt's operating threshold
    is the validation images' best-F1 one, rounded down to 0.01."""
    from crystal_rt.assets import demo_model
    from crystal_rt.cli.train import threshold_or_auto
    from crystal_rt.models.maskrcnn import load_checkpoint
    from crystal_rt.train.loop import Hooks, TrainConfig, picked_threshold, train

    assert threshold_or_auto("AUTO") == "auto" and threshold_or_auto("0.25") == 0.25
    assert TrainConfig.for_recipe("finetune", data="d", images=None, output="o", init="m.onnx").pick_threshold
    report = type("Report", (), {"best_f1": {"score_threshold": 0.8769}})()
    assert picked_threshold(report) == 0.87  # type: ignore[arg-type]

    config = _config(
        dataset,
        tmp_path / "f",
        init=str(demo_model()),
        input_size=256,
        crop_size=128,
        iterations=1,
        val_every=1,
        pick_threshold=True,
        freeze_backbone=True,
    )
    result = train(config, hooks=Hooks())  # type: ignore[arg-type]
    log = [json.loads(line) for line in (tmp_path / "f" / "log.jsonl").read_text().splitlines()]
    picked = [line["validation"]["score_threshold"] for line in log if "validation" in line]
    assert picked and 0.0 < picked[-1] <= 1.0
    assert load_checkpoint(result.best).model_spec.score_threshold == picked[-1]


def test_patience_and_the_time_limit_stop_training(dataset: Path, tmp_path: Path) -> None:
    from crystal_rt.train.loop import Hooks, train

    said: list[str] = []
    # validation every step, stop after 1 without improvement: a 10-step run ends early
    result = train(
        _config(dataset, tmp_path / "p", iterations=10, val_every=1, patience=1, freeze_backbone=True),
        hooks=Hooks(on_message=said.append),
    )  # type: ignore[arg-type]
    assert result.iterations < 10 and any("without a better mAP" in text for text in said)
    assert result.best.is_file()
    quick = train(_config(dataset, tmp_path / "t", iterations=50, max_minutes=1e-4), hooks=Hooks())  # type: ignore[arg-type]
    assert quick.iterations == 1 and quick.last.is_file()  # validated and saved at the step it stopped


def test_train_checkpoint_resume_export_evaluate(dataset: Path, tmp_path: Path) -> None:
    from crystal_rt.cli.main import main
    from crystal_rt.models.maskrcnn import load_checkpoint
    from crystal_rt.train.loop import Hooks, train

    seen: list[int] = []
    validations: list[dict[str, object]] = []
    hooks = Hooks(on_step=lambda i, losses: seen.append(i), on_validation=lambda i, m: validations.append(m))
    result = train(_config(dataset, tmp_path / "run"), hooks=hooks)  # type: ignore[arg-type]
    assert seen == [1, 2, 3] and [v["iteration"] for v in validations] == [2, 3]
    assert result.best.is_file() and result.last.is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum("validation" in line for line in log) == 2

    loaded = load_checkpoint(result.best)  # what `crystal-rt export` reads
    assert loaded.model_spec.class_names == ("__background__", "crystal")
    assert loaded.preprocess.input_size == 128 and loaded.model_kwargs["fpn_channels"] == 128

    resumed = train(_config(dataset, tmp_path / "run", iterations=4), resume=True, hooks=Hooks())
    assert resumed.iterations == 4
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    assert state["train"]["iteration"] == 4

    report = tmp_path / "eval.json"
    assert main(["evaluate", str(result.best), "--data", str(dataset), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    for key in ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall", "classes"):
        assert key in data
    assert data["num_images"] == 5


def test_resume_a_moved_run_whose_init_is_gone(dataset: Path, tmp_path: Path) -> None:
    """--resume reads weights and norm from last.pt: the --init file may be gone, the folder moved,
    and a --max-minutes given now is this invocation's limit."""
    import shutil

    from crystal_rt.train.loop import Hooks, train

    first = train(_config(dataset, tmp_path / "a", iterations=2), hooks=Hooks())  # type: ignore[arg-type]
    init = tmp_path / "init.pt"
    shutil.copy(first.best, init)
    train(_config(dataset, tmp_path / "b", iterations=2, init=str(init)), hooks=Hooks())  # type: ignore[arg-type]
    init.unlink()
    moved = tmp_path / "moved"
    (tmp_path / "b").rename(moved)
    resumed = train(_config(dataset, moved, iterations=3, max_minutes=30.0), resume=True, hooks=Hooks())  # type: ignore[arg-type]
    assert resumed.iterations == 3 and resumed.last.parent == moved
    state = torch.load(moved / "last.pt", map_location="cpu", weights_only=True)["train"]
    assert state["iteration"] == 3 and state["norm"] == "frozen"
    assert state["config"]["max_minutes"] == 30.0 and state["config"]["init"] == str(init)


def test_resume_without_a_run_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    from crystal_rt.errors import CrystalRtError
    from crystal_rt.train.loop import train

    with pytest.raises(CrystalRtError, match="nothing to resume"):
        train(_config(dataset, tmp_path / "none"), resume=True)  # type: ignore[arg-type]


def test_bad_config_is_refused(dataset: Path, tmp_path: Path) -> None:
    from crystal_rt.errors import CrystalRtError
    from crystal_rt.train.loop import train

    with pytest.raises(CrystalRtError, match="--crop-size"):
        train(_config(dataset, tmp_path / "x", crop_size=512))  # type: ignore[arg-type]


def test_initial_weights_fit_or_are_refused(tmp_path: Path) -> None:
    # An ImageNet-style ResNet-18 state_dict (backbone keys without a prefix) fits the backbone.
    from torchvision.models import resnet18

    from crystal_rt.errors import InvalidModel
    from crystal_rt.models.maskrcnn import build_maskrcnn
    from crystal_rt.train.weights import load_initial_weights

    backbone = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), backbone)
    model = build_maskrcnn("maskrcnn_resnet18_fpn", 2)
    report = load_initial_weights(model, backbone)
    assert report.backbone_only and report.loaded >= 60 and report.skipped == 2  # fc.weight, fc.bias

    # A detection model with another class count: everything but the class-specific heads fits.
    other = tmp_path / "three_classes.pth"
    torch.save(build_maskrcnn("maskrcnn_resnet18_fpn", 3).state_dict(), other)
    report = load_initial_weights(model, other)
    assert not report.backbone_only and report.skipped == 6  # cls_score, bbox_pred, mask logits (w, b)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(InvalidModel, match="not a PyTorch checkpoint"):
        load_initial_weights(model, garbage)
    with pytest.raises(InvalidModel, match="fit"):
        torch.save({"a.weight": torch.zeros(3)}, tmp_path / "tiny.pth")
        load_initial_weights(model, tmp_path / "tiny.pth")
