"""Weights back from a core ONNX (train --init crystals.onnx): folded batch norms restored exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from crystal_rt.errors import InvalidModel  # noqa: E402
from crystal_rt.models.maskrcnn import build_maskrcnn, load_checkpoint, save_checkpoint  # noqa: E402
from crystal_rt.spec import ModelSpec, PreprocessSpec  # noqa: E402
from crystal_rt.train.onnx_weights import is_onnx_source, onnx_model_info, onnx_state_dict  # noqa: E402
from crystal_rt.train.weights import load_initial_weights  # noqa: E402

ARCH = "maskrcnn_resnet18_fpn"
OPTIONS = {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}


def _model(num_classes: int = 2) -> torch.nn.Module:
    pre = PreprocessSpec.paper(input_size=256)
    return build_maskrcnn(ARCH, num_classes, preprocess=pre, max_detections=20, **OPTIONS)


@pytest.fixture(scope="module")
def trained_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A model whose frozen batch norms are not the identity (as after training), and its core ONNX."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from crystal_rt.export.onnx_export import export_core_onnx

    root = tmp_path_factory.mktemp("onnx-init")
    torch.manual_seed(3)
    model = _model()
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            n = module.weight.shape[0]
            module.weight.copy_(torch.rand(n) + 0.5)
            module.bias.copy_(torch.randn(n) * 0.1)
            module.running_mean.copy_(torch.randn(n) * 0.1)
            module.running_var.copy_(torch.rand(n) + 0.5)
    spec = ModelSpec(arch=ARCH, num_classes=2, max_detections=20)
    checkpoint = save_checkpoint(
        root / "m.pt", model, spec, PreprocessSpec.paper(input_size=256), model_kwargs=OPTIONS
    )
    result = export_core_onnx(load_checkpoint(checkpoint), root / "m.onnx", validate=False)
    return model.eval(), result.path


def test_folded_batch_norms_come_back_exactly(trained_onnx: tuple[torch.nn.Module, Path]) -> None:
    original, onnx_file = trained_onnx
    restored = _model()
    report = load_initial_weights(restored, onnx_file)
    assert report.loaded == report.total - sum(
        k.endswith("num_batches_tracked") for k in restored.state_dict()
    )
    assert not report.backbone_only
    restored.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        a, b = original.backbone(x), restored.backbone(x)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)  # float32 order of operations
        da, db = original([x[0]])[0], restored([x[0]])[0]
    assert da["boxes"].shape == db["boxes"].shape
    torch.testing.assert_close(db["scores"], da["scores"], rtol=1e-4, atol=1e-5)


def test_a_new_class_count_reinitialises_only_the_predictors(
    trained_onnx: tuple[torch.nn.Module, Path],
) -> None:
    _, onnx_file = trained_onnx
    three = _model(num_classes=3)
    report = load_initial_weights(three, onnx_file)
    # cls_score, bbox_pred (weight, bias) and the mask predictor's last conv (weight, bias)
    assert report.skipped == 6
    assert report.loaded == report.total - 6 - sum(
        k.endswith("num_batches_tracked") for k in three.state_dict()
    )


def test_the_shipped_model_is_a_starting_point() -> None:
    from crystal_rt.assets import demo_model
    from crystal_rt.train.loop import SLIM

    info = onnx_model_info(demo_model())
    assert info["arch"] == "maskrcnn_resnet18_fpn" and info["slim"] and info["num_classes"] == 2
    model = build_maskrcnn(info["arch"], 2, preprocess=PreprocessSpec.paper(), max_detections=50, **SLIM)
    state = onnx_state_dict(demo_model(), model)
    wanted = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(state) == sorted(wanted)  # every weight of the model, from the ONNX alone


def test_not_onnx_is_one_typed_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    assert is_onnx_source(junk) and is_onnx_source(tmp_path)
    with pytest.raises(InvalidModel, match="not a readable ONNX graph"):
        load_initial_weights(_model(), junk)


def test_training_from_the_shipped_onnx_takes_its_shape() -> None:
    from crystal_rt.assets import demo_model
    from crystal_rt.train.loop import TrainConfig, _config_for_onnx

    said: list[str] = []

    class Hooks:
        def on_message(self, text: str) -> None:
            said.append(text)

    config = _config_for_onnx(
        TrainConfig(data="d.json", images=None, output="o", init=str(demo_model())), Hooks()
    )  # type: ignore[arg-type]
    assert config.slim and config.arch == "maskrcnn_resnet18_fpn"
    assert said and "slim maskrcnn_resnet18_fpn" in said[0]


def test_an_engine_folder_gives_the_same_weights(
    trained_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    from crystal_rt.build.engine import build_engine

    original, onnx_file = trained_onnx
    build_engine(onnx_file, tmp_path / "engine")  # ONNX Runtime's optimised graph: BN folded into Conv
    restored = _model()
    report = load_initial_weights(restored, tmp_path / "engine")
    assert report.loaded == report.total - sum(
        k.endswith("num_batches_tracked") for k in restored.state_dict()
    )
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        a, b = original.backbone(x), restored.eval().backbone(x)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)


def test_an_engine_whose_source_is_gone_is_one_typed_error(
    trained_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    import shutil

    from crystal_rt.build.engine import build_engine

    _, onnx_file = trained_onnx
    moved = tmp_path / "m.onnx"
    shutil.copy(onnx_file, moved)
    build_engine(moved, tmp_path / "engine")
    moved.unlink()
    with pytest.raises(InvalidModel, match="is gone or changed"):
        load_initial_weights(_model(), tmp_path / "engine")
    with pytest.raises(InvalidModel, match=r"only \d+ of this model's \d+ tensors"):
        load_initial_weights(_model(), tmp_path / "engine" / "m.onnx")  # the optimised graph itself
