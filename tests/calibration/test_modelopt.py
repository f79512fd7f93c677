"""The TensorRT route: ModelOpt INT8 Q/DQ and AutoCast FP16 graphs, run on ONNX Runtime's CPU.

ModelOpt pins onnx 1.21 and onnxruntime-gpu, so it lives in its own install
(``pip install ".[calibrate-trt,dev]"`` in a separate venv); these tests skip elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("modelopt.onnx.quantization")
onnx = pytest.importorskip("onnx")

from crystal_rt.assets import demo_model  # noqa: E402
from crystal_rt.calibration.api import calibrate  # noqa: E402
from crystal_rt.calibration.fp16 import FP16_SCOPES  # noqa: E402
from crystal_rt.calibration.metadata import read_calibration  # noqa: E402
from crystal_rt.data.synth_writer import SynthOptions, write_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drops")
    write_synthetic(root, SynthOptions(count=8, seed=11, size=(512, 512), colour="gray", bit_depth="8"))
    return root / "images"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_tensorrt_graphs(precision: str, drops: Path, tmp_path: Path) -> None:
    source = demo_model()
    before = _sha(source)
    out = tmp_path / f"crystals.{precision}.onnx"
    result = calibrate(source, drops, out, precision=precision, target="tensorrt", num_images=4, held_out=4)
    assert _sha(source) == before, "the FP32 model must not be modified"
    model = onnx.load(str(out))
    info = read_calibration({p.key: p.value for p in model.metadata_props}, out)
    assert info is not None and info.target == "tensorrt" and info.tool.startswith("nvidia-modelopt")
    assert result.accuracy.matched_mask_iou > 0.8
    ops = {n.op_type for n in model.graph.node}
    float_type = onnx.TensorProto.FLOAT
    assert all(i.type.tensor_type.elem_type == float_type for i in model.graph.input)  # keep_io_types
    to_half = [
        n
        for n in model.graph.node
        if n.op_type == "Cast"
        and next(a.i for a in n.attribute if a.name == "to") == onnx.TensorProto.FLOAT16
    ]
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # the float layers INT8 does not cover run in FP16 inside the convolutional scopes only
        assert to_half and all(
            n.name.startswith(FP16_SCOPES) or n.name.endswith("_cast_to_fp16") for n in to_half
        )
    else:
        half = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert convs and all(n.input[1] in half for n in convs)
    # RoiAlign, NMS and TopK stay FP32: none of their inputs is a Cast to FP16.
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("RoiAlign", "NonMaxSuppression", "TopK"):
            for name in node.input:
                p = producers.get(name)
                assert p is None or p not in to_half, (node.name, name)
