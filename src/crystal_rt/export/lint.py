"""Check a core ONNX graph against what TensorRT's ONNX parser imports natively.

The op list follows onnx-tensorrt's operator matrix for TensorRT 10 (see
``docs/gpu-stack.md``): RoiAlign through the ROIAlign_TRT plugin that
``trt.init_libnvinfer_plugins`` registers, NonZero and NonMaxSuppression natively. On top of
that, the core-graph contract forbids ``If`` and ``Loop``, TopK needs a constant K < 3840,
Resize must be nearest/linear without antialiasing, ScatterElements must not reduce, and the
network input must not be resized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._lazy import require
from ..errors import LintError

if TYPE_CHECKING:
    import onnx

TENSORRT_NATIVE_OPS = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "InstanceNormalization",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "LRN",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "Or",
        "Pad",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "RoiAlign",
        "Round",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Where",
        "Xor",
    ]
)
# Parsed by TensorRT, but excluded from the core graph by the design contract.
FORBIDDEN_OPS = {
    "If": "data-dependent branch (patch torchvision's batched NMS helper)",
    "Loop": "loop (mask pasting belongs to postprocessing)",
}
TOPK_MAX = 3840


@dataclass(frozen=True)
class LintProblem:
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.reason}"


def _constant_values(graph: onnx.GraphProto) -> dict[str, list[int]]:
    from onnx import numpy_helper

    values: dict[str, list[int]] = {}
    for init in graph.initializer:
        values[init.name] = numpy_helper.to_array(init).reshape(-1).tolist()
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t).reshape(-1).tolist()
    return values


def lint_model(model: onnx.ModelProto) -> list[LintProblem]:
    """Every node that TensorRT cannot import or the core contract forbids."""
    from onnx import helper

    graph = model.graph
    problems: list[LintProblem] = []
    constants = _constant_values(graph)
    graph_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    for node in graph.node:
        name = node.name or (node.output[0] if node.output else "?")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            problems.append(LintProblem(name, node.op_type, f"custom domain {node.domain!r}"))
        elif node.op_type in FORBIDDEN_OPS:
            problems.append(LintProblem(name, node.op_type, FORBIDDEN_OPS[node.op_type]))
        elif node.op_type not in TENSORRT_NATIVE_OPS:
            problems.append(
                LintProblem(name, node.op_type, "not imported natively by TensorRT's ONNX parser")
            )
        elif node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(LintProblem(name, "TopK", "K is not a constant"))
            elif max(k) >= TOPK_MAX:
                problems.append(LintProblem(name, "TopK", f"K = {max(k)} >= {TOPK_MAX}"))
        elif node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            if mode not in ("nearest", "linear"):
                problems.append(LintProblem(name, "Resize", f"mode {mode!r} (only nearest/linear)"))
            if attrs.get("antialias", 0):
                problems.append(LintProblem(name, "Resize", "antialias is not supported"))
            if node.input and node.input[0] in graph_inputs:
                problems.append(
                    LintProblem(name, "Resize", "resizes the network input (preprocessing is outside)")
                )
        elif node.op_type == "ScatterElements":
            reduction = attrs.get("reduction", b"none")
            reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
            if reduction != "none":
                problems.append(LintProblem(name, "ScatterElements", f"reduction={reduction!r}"))
    return problems


def lint_onnx(model: onnx.ModelProto | str | Path) -> None:
    """Raise LintError listing every problem; return quietly for a clean graph."""
    onnx_mod = require("onnx", "Linting an ONNX graph")
    path = None
    if isinstance(model, str | Path):
        path = Path(model)
        model = onnx_mod.load(str(path))
    problems = lint_model(model)  # type: ignore[arg-type]
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        nodes = len({p.node for p in problems})
        raise LintError(f"{nodes} node(s) TensorRT cannot import: {shown}{more}", path=path)
