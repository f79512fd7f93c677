"""Core ONNX export: contract (I/O, opset, metadata, ops), parity with PyTorch, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from crystal_rt.errors import InvalidModel, LintError, ParityError  # noqa: E402
from crystal_rt.export.lint import lint_model, lint_onnx  # noqa: E402
from crystal_rt.models.maskrcnn import build_maskrcnn, load_checkpoint  # noqa: E402
from crystal_rt.models.reference import detector_from_checkpoint  # noqa: E402
from crystal_rt.spec import MODEL_METADATA_KEY, SPEC_METADATA_KEY, ModelSpec, PreprocessSpec  # noqa: E402


def _dims(value_info: object) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_core_graph_contract(tiny):
    model = onnx.load(str(tiny.onnx))
    assert [i.name for i in model.graph.input] == ["images"]
    assert _dims(model.graph.input[0]) == [1, 3, tiny.size, tiny.size]
    outputs = {o.name: _dims(o) for o in model.graph.output}
    assert outputs == {
        "boxes": [tiny.k, 4],
        "scores": [tiny.k],
        "labels": [tiny.k],
        "masks": [tiny.k, 28, 28],
    }
    label_type = next(o for o in model.graph.output if o.name == "labels").type.tensor_type.elem_type
    assert label_type == onnx.TensorProto.INT64
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"If", "Loop"}
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= ops
    assert lint_model(model) == []


def test_metadata_round_trip(tiny):
    meta = {p.key: p.value for p in onnx.load(str(tiny.onnx)).metadata_props}
    assert PreprocessSpec.from_json(meta[SPEC_METADATA_KEY]) == PreprocessSpec.paper(input_size=tiny.size)
    spec = ModelSpec.from_json(meta[MODEL_METADATA_KEY])
    assert spec.arch == tiny.arch
    assert spec.max_detections == tiny.k
    assert spec.class_names == ("__background__", "crystal")


def test_validation_report(tiny):
    parity = tiny.export_result.parity
    assert parity is not None and parity.ok
    summary = parity.summary()
    assert summary["matched"] > 0
    assert summary["min_box_iou"] >= 0.99
    assert summary["min_mask_iou"] >= 0.98
    assert summary["max_score_diff"] <= 1e-3


def test_zero_detections_run_on_both(tiny, tmp_path):
    """A graph in which no detection passes the score threshold: K zero rows from torch and ORT."""
    from crystal_rt.export.onnx_export import check_empty_path
    from crystal_rt.models.core import CoreMaskRCNN

    loaded = load_checkpoint(tiny.checkpoint)
    core = CoreMaskRCNN(loaded.model, tiny.size, tiny.k)
    tensor = np.random.default_rng(0).standard_normal((1, 3, tiny.size, tiny.size)).astype(np.float32)
    check_empty_path(core, tensor, tmp_path / "m.onnx")  # raises ParityError on any difference
    assert core.roi_heads.score_thresh == pytest.approx(0.05)  # restored afterwards


def test_failed_validation_names_worst_detection(tiny, tmp_path):
    from crystal_rt.evaluate.parity import Tolerances
    from crystal_rt.export.onnx_export import export_core_onnx

    loaded = load_checkpoint(tiny.checkpoint)
    impossible = Tolerances(box_iou=1.01, mask_iou=0.98, score=1e-3)
    with pytest.raises(ParityError) as err:
        export_core_onnx(loaded, tmp_path / "strict.onnx", tolerances=impossible)
    assert "worst: synthetic-drop" in str(err.value)
    report = err.value.report  # the ParityReport behind the message
    assert report is not None and not report.ok and report.failures
    assert "box IoU" in str(err.value) and "score" in str(err.value)


def test_core_matches_torchvision_eager(tiny):
    """On an S x S image torchvision's transform is the identity resize: its eager model, with its
    own normalisation and paste, must give the same detections as our core + postprocess."""
    from crystal_rt.data.synthetic import make_drop
    from crystal_rt.evaluate.parity import Tolerances, compare_results
    from crystal_rt.results.detection import DetectionResult, Instance, InstanceMask
    from crystal_rt.runtime.postprocess import MASK_THRESHOLD
    from crystal_rt.runtime.preprocess import apply_clahe

    loaded = load_checkpoint(tiny.checkpoint)
    image = make_drop(5, tiny.size, tiny.size).image
    ours = detector_from_checkpoint(tiny.checkpoint, score_threshold=0.05).detect(image, name="drop")

    enhanced = apply_clahe(image, loaded.preprocess)
    x = torch.from_numpy(np.repeat(enhanced[None], 3, axis=0)).float() / 255.0
    with torch.inference_mode():
        out = loaded.model([x])[0]
    instances = []
    for box, score, label, prob in zip(out["boxes"], out["scores"], out["labels"], out["masks"], strict=True):
        full = (prob[0] > MASK_THRESHOLD).numpy()
        instances.append(
            Instance(
                int(label),
                "crystal",
                float(score),
                tuple(float(v) for v in box),
                InstanceMask(full, 0, 0, tiny.size, tiny.size),
            )
        )
    theirs = DetectionResult(tiny.size, tiny.size, instances, image="drop")
    report = compare_results(
        theirs,
        ours,
        score_threshold=0.05,
        max_detections=tiny.k,
        tolerances=Tolerances(box_iou=0.99, mask_iou=0.97, score=1e-3),
    )
    assert report.matched >= len(instances) - 2
    assert not report.failures, report.failures[:3]


def test_plain_state_dict_needs_arch_and_infers_classes(tiny, tmp_path):
    torch.manual_seed(1)
    model = build_maskrcnn(tiny.arch, 3, **tiny.options)
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(InvalidModel, match="--arch"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, arch=tiny.arch)
    assert loaded.model_spec.num_classes == 3
    assert loaded.model_spec.class_names == ("__background__", "class_1", "class_2")
    # torchvision's reference scripts wrap the state_dict as {"model": ...}
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    assert load_checkpoint(tmp_path / "wrapped.pth", arch=tiny.arch).model_spec.num_classes == 3
    with pytest.raises(InvalidModel, match="weights do not fit"):
        load_checkpoint(path, arch="maskrcnn_mobilenet_v3_large_fpn")
    with pytest.raises(InvalidModel, match="classes"):
        load_checkpoint(path, arch=tiny.arch, num_classes=2)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_bad_checkpoint_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(InvalidModel) as err:
        load_checkpoint(path)
    assert "bad.pt" in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(InvalidModel, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unknown_arch():
    with pytest.raises(InvalidModel, match="unknown architecture"):
        build_maskrcnn("maskrcnn_vgg_fpn", 2)


def _graph(nodes, inputs, outputs, initializers=()):
    from onnx import TensorProto, helper

    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            initializer=list(initializers),
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model


def test_lint_flags_what_tensorrt_cannot_import(tmp_path):
    from onnx import helper, numpy_helper

    branch = helper.make_graph(
        [], "b", [], [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)]
    )
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="branchy", then_branch=branch, else_branch=branch),
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_dynamic"),
        helper.make_node("TopK", ["x", "kbig"], ["v2", "i2"], name="topk_big"),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize_input", mode="cubic"),
        helper.make_node("ScatterElements", ["x", "idx", "x"], ["s"], name="scatter_add", reduction="add"),
        helper.make_node("Relu", ["x"], ["ok"], name="fine"),
    ]
    inits = [
        numpy_helper.from_array(np.array([5000], dtype=np.int64), "kbig"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
    ]
    problems = lint_model(_graph(nodes, ["x", "c", "k", "idx"], ["y"], inits))
    by_node: dict[str, str] = {}
    for p in problems:
        by_node[p.node] = by_node.get(p.node, "") + p.reason + "; "
    assert set(by_node) == {"branchy", "uniq", "topk_dynamic", "topk_big", "resize_input", "scatter_add"}
    assert "not a constant" in by_node["topk_dynamic"]
    assert "5000" in by_node["topk_big"]
    assert "cubic" in by_node["resize_input"] and "network input" in by_node["resize_input"]
    path = tmp_path / "bad.onnx"
    onnx.save(_graph(nodes, ["x", "c", "k", "idx"], ["y"], inits), str(path))
    with pytest.raises(LintError) as err:
        lint_onnx(path)
    assert "6 node(s)" in str(err.value) and "bad.onnx" in str(err.value)


def test_export_cli_writes_validated_onnx(tiny, tmp_path, capsys):
    from crystal_rt.cli.main import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(tiny.checkpoint), "-o", str(out), "--max-detections", "10"]) == 0
    printed = capsys.readouterr().out
    assert "validated against PyTorch" in printed and "K=10" in printed
    dims = _dims(next(o for o in onnx.load(str(out)).graph.output if o.name == "scores"))
    assert dims == [10]


def test_export_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    from crystal_rt.cli.main import main

    bad = tmp_path / "model.pt"
    bad.write_text("hello")
    assert main(["export", str(bad), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "model.pt" in err and "Traceback" not in err
    assert not Path(tmp_path / "x.onnx").exists()


def test_training_bit_depth_option_reaches_the_recipe() -> None:
    """``--training-bit-depth 16`` (a model trained on 16-bit images) is written into the recipe;
    without it the checkpoint's (or the preset's) recipe keeps its own, 8 for both presets."""
    import argparse

    from crystal_rt.cli.export import add_checkpoint_options, checkpoint_options
    from crystal_rt.export.api import choose_recipe

    parser = argparse.ArgumentParser()
    add_checkpoint_options(parser)
    options = checkpoint_options(parser.parse_args(["--training-bit-depth", "16"]))
    assert options.kwargs()["training_bit_depth"] == 16
    assert checkpoint_options(parser.parse_args([])).training_bit_depth is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--training-bit-depth", "12"])
    paper = PreprocessSpec.paper()
    assert choose_recipe(paper, training_bit_depth=16) == PreprocessSpec.paper(training_bit_depth=16)
    assert choose_recipe(paper, preset="chimp").training_bit_depth == 8
    assert choose_recipe(PreprocessSpec.paper(training_bit_depth=16)).training_bit_depth == 16
