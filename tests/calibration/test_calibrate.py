"""Calibration: ONNX Runtime INT8 on the shipped demo model, the accuracy gate, build-engine's routes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.errors import BackendUnavailable, CalibrationError, MissingDependency

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crystal_rt.assets import demo_model  # noqa: E402
from crystal_rt.build.engine import build_engine  # noqa: E402
from crystal_rt.calibration.accuracy import match_masks  # noqa: E402
from crystal_rt.calibration.api import CalibrationResult, calibrate  # noqa: E402
from crystal_rt.calibration.images import CalibrationImages  # noqa: E402
from crystal_rt.calibration.metadata import CALIBRATION_METADATA_KEY, read_calibration  # noqa: E402
from crystal_rt.cli.main import main  # noqa: E402
from crystal_rt.data.synth_writer import SynthOptions, write_synthetic  # noqa: E402
from crystal_rt.results.detection import Instance, InstanceMask  # noqa: E402
from crystal_rt.runtime.detector import Detector  # noqa: E402
from crystal_rt.spec import PreprocessSpec  # noqa: E402


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 synthetic 512x512 drops (8 calibrate, the rest check accuracy)."""
    root = tmp_path_factory.mktemp("drops")
    write_synthetic(root, SynthOptions(count=14, seed=7, size=(512, 512), colour="gray", bit_depth="8"))
    return root / "images"


@pytest.fixture(scope="module")
def int8(drops: Path, tmp_path_factory: pytest.TempPathFactory) -> CalibrationResult:
    out = tmp_path_factory.mktemp("int8") / "crystals.int8.onnx"
    return calibrate(demo_model(), drops, out, num_images=8, held_out=6, max_map_drop=0.05)


def test_int8_graph_quantizes_matrix_products_only(int8: CalibrationResult) -> None:
    """Q/DQ pairs are added only around Conv/ConvTranspose/Gemm/MatMul; every other op (RoiAlign,
    NMS, TopK, box decoding, the mask sigmoid) is the FP32 graph's own, computing in float."""
    from collections import Counter

    from crystal_rt.calibration.int8 import QUANTIZED_OPS

    model = onnx.load(str(int8.output))
    fp32 = onnx.load(str(demo_model()))
    # ONNX Runtime's pre-processing folds constants, so the graph is not node-for-node the FP32
    # one; but every convolution and every float-only op is still there, none replaced by an
    # integer op (the engine fuses Q/DQ into integer kernels at load time).
    ops = Counter(n.op_type for n in model.graph.node)
    fp32_ops = Counter(n.op_type for n in fp32.graph.node)
    for op in ("Conv", "ConvTranspose", "RoiAlign", "NonMaxSuppression", "TopK", "Sigmoid", "Exp"):
        assert ops[op] == fp32_ops[op], op
    assert not [op for op in ops if op.startswith("QLinear") or op.endswith("Integer")]
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    int8_weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in int8_weights
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in int8_weights:
            # An activation's Q/DQ pair sits on the input or the output of a quantized op.
            feeds = any(op in QUANTIZED_OPS for op in consumers[node.output[0]])
            quantize = producers.get(node.input[0])
            source = producers.get(quantize.input[0]) if quantize is not None else None
            assert feeds or (source is not None and source.op_type in QUANTIZED_OPS), node.name
    assert {o.name for o in model.graph.output} == {"boxes", "scores", "labels", "masks"}


def test_int8_metadata_records_provenance_and_accuracy(int8: CalibrationResult) -> None:
    metadata = {p.key: p.value for p in onnx.load(str(int8.output), load_external_data=False).metadata_props}
    assert "crystal_rt.spec" in metadata and "crystal_rt.model" in metadata
    info = read_calibration(metadata, int8.output)
    assert info is not None
    assert (info.precision, info.target, info.num_images) == ("int8", "onnxruntime", 8)
    assert info.tool.startswith("onnxruntime ") and len(info.images_sha256) == 64
    acc = info.accuracy
    assert acc["reference"].startswith("FP32 detections on 6 image(s)")
    assert acc["fp32_map50"] == pytest.approx(1.0)  # FP32 is its own truth here
    assert 0.0 <= acc["map50"] <= 1.0 and acc["map50_drop"] <= 0.05
    assert acc["fp32_detections"] > 0 and acc["matched"] > 0.7 * acc["fp32_detections"]
    assert acc["matched_mask_iou"] > 0.8


def test_int8_engine_builds_and_runs(int8: CalibrationResult, drops: Path, tmp_path: Path) -> None:
    manifest = build_engine(int8.output, tmp_path / "engine", precision="int8")
    assert manifest.precision == "int8"
    assert manifest.build_options["calibration"]["target"] == "onnxruntime"
    image = sorted(drops.glob("*.png"))[-1]
    with Detector.load(tmp_path / "engine") as det8, Detector.from_onnx(demo_model()) as det32:
        assert det8.manifest is not None and det8.manifest.precision == "int8"
        r8, r32 = det8.detect(image), det32.detect(image)
    assert len(r32) > 0
    ious = match_masks(r32.instances, r8.instances)
    assert len(ious) >= 0.7 * len(r32) and min(ious) > 0.5


def test_build_engine_refuses_wrong_graph_for_the_precision(int8: CalibrationResult, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="calibrated for int8; build it with --precision int8"):
        build_engine(int8.output, tmp_path / "a")
    with pytest.raises(BackendUnavailable, match="needs a calibrated graph: pass --calib DIR"):
        build_engine(demo_model(), tmp_path / "b", precision="int8")
    # An INT8 graph made for TensorRT (ModelOpt) would run slower than FP32 on ONNX Runtime.
    model = onnx.load(str(int8.output))
    for prop in model.metadata_props:
        if prop.key == CALIBRATION_METADATA_KEY:
            data = json.loads(prop.value)
            data.update(target="tensorrt", tool="nvidia-modelopt 0.47.0")
            prop.value = json.dumps(data)
    trt_graph = tmp_path / "trt.int8.onnx"
    onnx.save(model, str(trt_graph))
    with pytest.raises(BackendUnavailable, match="made for tensorrt"):
        build_engine(trt_graph, tmp_path / "c", precision="int8")


def test_calibrating_a_calibrated_graph_is_refused(
    int8: CalibrationResult, drops: Path, tmp_path: Path
) -> None:
    with pytest.raises(CalibrationError, match="already calibrated"):
        calibrate(int8.output, drops, tmp_path / "x.onnx")


@pytest.mark.slow  # heavy: runs in make test-all / CI, not in a plain pytest
def test_accuracy_gate_refuses_then_force_writes(drops: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    for src in sorted(drops.glob("*.png"))[:6]:
        (small / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "out" / "gated.onnx"
    # A negative tolerance cannot be met: the graph is refused and nothing is written. A folder
    # smaller than --num-images still keeps an image out of calibration to check accuracy on.
    with pytest.raises(CalibrationError, match=r"on FP32 detections on 1 image\(s\) held out"):
        calibrate(demo_model(), small, out, max_map_drop=-1.0)
    assert not out.exists() and list(out.parent.iterdir()) == []
    forced = calibrate(demo_model(), drops, out, num_images=4, held_out=2, max_map_drop=-1.0, force=True)
    assert out.is_file() and not forced.accepted


def test_build_engine_calib_in_one_step(drops: Path, tmp_path: Path) -> None:
    """``build-engine --precision int8 --calib DIR``: calibrate + build through the CLI."""
    code = main(
        ["build-engine", str(demo_model()), "-o", str(tmp_path), "--precision", "int8",
         "--calib", str(drops), "--num-images", "4", "--held-out", "2", "--max-map-drop", "0.2"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((tmp_path / "crystals.manifest.json").read_text())
    assert manifest["precision"] == "int8" and (tmp_path / "crystals.int8.onnx").is_file()
    assert manifest["build_options"]["calibration"]["num_images"] == 4


def test_cli_errors_are_one_line(drops: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(demo_model()), "--images", str(tmp_path / "nope"), "-o", "x.onnx"]) == 1
    assert "calibration image folder not found" in capsys.readouterr().err
    assert main(["build-engine", str(demo_model()), "-o", str(tmp_path), "--calib", str(drops)]) == 1
    assert "--calib calibrates for --precision int8" in capsys.readouterr().err


def test_too_few_usable_images(tmp_path: Path, drops: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for i, src in enumerate(sorted(drops.glob("*.png"))[:2]):
        (folder / f"ok{i}.png").write_bytes(src.read_bytes())
    for i in range(4):
        (folder / f"bad{i}.png").write_bytes(b"not a png")
    images = CalibrationImages(folder, PreprocessSpec(), num_images=6)
    with pytest.raises(CalibrationError, match=r"only 2 usable image\(s\).*4 unreadable"):
        list(images.tensors())


def test_image_sample_is_seeded_and_fingerprinted(drops: Path) -> None:
    a = CalibrationImages(drops, PreprocessSpec(), num_images=5, seed=1)
    b = CalibrationImages(drops, PreprocessSpec(), num_images=5, seed=1)
    c = CalibrationImages(drops, PreprocessSpec(), num_images=5, seed=2)
    assert a.paths == b.paths and a.paths != c.paths
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    tensors = list(a.tensors())
    assert len(tensors) == 5 and tensors[0].shape == (1, 3, 512, 512) and tensors[0].dtype == np.float32


def test_fp16_without_modelopt_names_the_extra(drops: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("ModelOpt is installed here (see test_modelopt.py)")
    with pytest.raises(MissingDependency, match=r"crystal-rt\[calibrate-trt\]"):
        calibrate(demo_model(), drops, tmp_path / "f.onnx", precision="fp16", num_images=4)
    with pytest.raises(CalibrationError, match="FP16 graphs are for TensorRT"):
        calibrate(demo_model(), drops, tmp_path / "f.onnx", precision="fp16", target="onnxruntime")


def _inst(label: int, x0: int, y0: int, w: int, h: int) -> Instance:
    mask = InstanceMask(np.ones((h, w), dtype=bool), x0, y0, 100, 100)
    return Instance(label, "c", 0.9, (x0, y0, x0 + w, y0 + h), mask)


def test_match_masks_pairs_one_to_one_by_label() -> None:
    ref = [_inst(1, 0, 0, 10, 10), _inst(1, 50, 50, 10, 10), _inst(2, 20, 20, 10, 10)]
    cand = [_inst(1, 1, 0, 10, 10), _inst(1, 0, 1, 10, 10), _inst(1, 20, 20, 10, 10)]
    ious = match_masks(ref, cand)
    # Both near-copies of ref[0] compete for it; only one gets it. The label-2 box stays unmatched.
    assert len(ious) == 1 and ious[0] == pytest.approx(90 / 110)


def test_images_in_sub_folders_need_recursive(tmp_path: Path, drops: Path) -> None:
    """Imagers store plate/well/drop trees: say where the images are, and --recursive uses them."""
    for i, src in enumerate(sorted(drops.glob("*.png"))[:5]):
        well = tmp_path / "plate" / f"A{i}"
        well.mkdir(parents=True)
        (well / "drop.png").write_bytes(src.read_bytes())
    flat = CalibrationImages(tmp_path / "plate", PreprocessSpec(), num_images=5)
    with pytest.raises(
        CalibrationError, match=r"only 0 usable.*5 image\(s\) in its sub-folders \(e\.g\. A0/drop\.png"
    ):
        list(flat.tensors())
    nested = CalibrationImages(tmp_path / "plate", PreprocessSpec(), num_images=5, recursive=True)
    assert len(list(nested.tensors())) == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match=r"holds no \.png/\.jpg/\.tif/\.bmp images"):
        list(CalibrationImages(empty, PreprocessSpec(), num_images=4).tensors())
