"""Which ONNX graph and which network/builder flags each precision needs (docs/contract.md,
"Precision routes").

* fp32: the FP32 graph (no calibration record), strongly typed where the flag exists.
* fp16: where ``trt.BuilderFlag.FP16`` exists (TensorRT 10.x, JetPack 6's 10.3) it is set on the FP32
  graph (weakly typed, as the flag requires), with every layer outside the convolutional parts
  (backbone, FPN, RPN head, box and mask heads) pinned to FP32 under ``OBEY_PRECISION_CONSTRAINTS``:
  box decoding, anchors, TopK and NMS inputs and ``ROIAlign_TRT`` (which accepts half) stay FP32, as
  docs/contract.md promises (:func:`pin_box_layers`); where it does not (TensorRT >= 11, TensorRT-RTX), an
  AutoCast FP16 graph made for tensorrt is required and built strongly typed. An AutoCast graph is
  also accepted where the flag exists (built strongly typed, without the flag).
* int8: a Q/DQ graph calibrated for tensorrt, strongly typed.

Everything is detected with ``hasattr``, never from version strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ...calibration.fp16 import FP16_SCOPES
from ...calibration.metadata import CalibrationInfo
from ...errors import BackendUnavailable


@dataclass(frozen=True)
class PrecisionRoute:
    """How to build: strongly typed network or not, and the builder flags (by name) to set."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    graph: str = "fp32"  # what the source graph is: "fp32", "autocast-fp16" or "qdq-int8"
    #: flags TensorRT sets by default that this precision must clear: FP32 clears TF32 (on by default,
    #: it runs FP32 convolutions and matrix products in TF32 on Ampere and newer, Orin included)
    cleared_flags: tuple[str, ...] = ()
    #: weakly typed FP16: the layers outside :data:`FP16_SCOPES` are pinned to FP32
    pin_fp32: bool = False

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "strongly_typed": self.strongly_typed,
            "builder_flags": list(self.builder_flags),
            "cleared_flags": list(self.cleared_flags),
            "graph": self.graph,
        }
        if self.pin_fp32:
            data["fp32_pinned"] = "every layer outside " + ", ".join(FP16_SCOPES)
        return data


def pin_box_layers(trt: ModuleType, network: Any) -> list[str]:
    """Pin every layer of ``network`` outside :data:`FP16_SCOPES` (the AutoCast route's scopes, which
    TensorRT's layer names keep from the ONNX nodes) that reads or writes floating point to
    FP32 (its precision, and the type of each floating output); returns their names. With
    ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` TensorRT then keeps them in FP32: box decoding, TopK,
    NMS (whose outputs are indices, but whose inputs are boxes and scores) and ``ROIAlign_TRT``."""
    floating = {trt.float32, trt.float16}
    pinned: list[str] = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        name = str(layer.name)
        if name.startswith(FP16_SCOPES):
            continue
        tensors = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not any(t is not None and t.dtype in floating for t in [*tensors, *outputs]):
            continue  # integer and bool layers (shapes, indices) have no FP16 to fall into
        layer.precision = trt.float32
        for i, out in enumerate(outputs):
            if out.dtype in floating:
                layer.set_output_type(i, trt.float32)
        pinned.append(name)
    return pinned


def has_strongly_typed(trt: ModuleType) -> bool:
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def has_fp16_flag(trt: ModuleType) -> bool:
    return hasattr(trt.BuilderFlag, "FP16")


def route_precision(
    trt: ModuleType, precision: str, info: CalibrationInfo | None, path: str | os.PathLike[str]
) -> PrecisionRoute:
    """The route for ``precision`` given the source graph's calibration record (None: an FP32 graph).

    Refuses, in one sentence naming the file, a graph that does not fit the precision."""
    typed = has_strongly_typed(trt)
    if info is not None and info.target != "tensorrt":
        raise BackendUnavailable(
            f"this {info.precision} graph was made for {info.target} ({info.tool}); TensorRT needs a graph "
            f"made for it: crystal-rt calibrate FP32.onnx --precision {info.precision} --target tensorrt",
            path=path,
        )
    if precision == "fp32":
        if info is not None:
            raise BackendUnavailable(
                f"this graph is calibrated for {info.precision}; build it with --precision {info.precision}, "
                "or build FP32 from the uncalibrated core ONNX",
                path=path,
            )
        return PrecisionRoute("fp32", strongly_typed=typed, cleared_flags=("TF32",))
    if precision == "fp16":
        if info is None:
            if has_fp16_flag(trt):
                return PrecisionRoute(
                    "fp16",
                    strongly_typed=False,
                    builder_flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                    pin_fp32=True,
                )
            raise BackendUnavailable(
                "this TensorRT has no FP16 builder flag (TensorRT >= 11): build from an AutoCast FP16 "
                "graph: crystal-rt calibrate FP32.onnx --precision fp16 --target tensorrt",
                path=path,
            )
        if info.precision != "fp16":
            raise BackendUnavailable(
                f"this is a {info.precision} graph; --precision fp16 needs the FP32 graph (TensorRT 10.x) "
                "or an AutoCast FP16 graph (crystal-rt calibrate --precision fp16 --target tensorrt)",
                path=path,
            )
        return PrecisionRoute("fp16", strongly_typed=typed, graph="autocast-fp16")
    if precision == "int8":
        if info is None or info.precision != "int8":
            what = "an FP32 graph" if info is None else f"a {info.precision} graph"
            raise BackendUnavailable(
                f"INT8 needs a Q/DQ graph calibrated for TensorRT, this is {what}: crystal-rt calibrate "
                "FP32.onnx --images DIR --precision int8 --target tensorrt (needs the calibrate-trt extra)",
                path=path,
            )
        return PrecisionRoute("int8", strongly_typed=typed, graph="qdq-int8")
    raise BackendUnavailable(f"unknown precision {precision!r}; choose fp32, fp16 or int8", path=path)
