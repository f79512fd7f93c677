"""FP16 graphs for TensorRT (>= 10.12, strongly typed) with NVIDIA ModelOpt's AutoCast.

The convolutional parts (backbone, FPN, RPN head, box and mask heads) go to FP16; everything
else — anchors, box decoding, RoiAlign, NMS, TopK, the mask sigmoid and the outputs — stays FP32,
as docs/contract.md's precision routes ask. Input and output types are kept (``keep_io_types``), so the
engine's buffers are the FP32 graph's.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import CalibrationError
from .images import CalibrationImages

# Node-name prefixes (torch.onnx scope names) of the parts that run in FP16; all others stay FP32.
FP16_SCOPES = ("/backbone/", "/rpn/head/", "/roi_heads/box_head/", "/roi_heads/box_predictor/",
               "/roi_heads/mask_head/", "/roi_heads/mask_predictor/")  # fmt: skip
KEEP_FP32_OPS = ("RoiAlign", "NonMaxSuppression", "TopK", "NonZero", "Exp", "Sigmoid")


def fp32_node_pattern() -> str:
    """A regex matching every node name outside FP16_SCOPES (ModelOpt's ``nodes_to_exclude``)."""
    alternatives = "|".join(scope.replace("/", "\\/") for scope in FP16_SCOPES)
    return f"^(?!({alternatives})).*"


def autocast_fp16(
    source: Path, output: Path, images: CalibrationImages, on_image: Callable[[], None] | None = None
) -> tuple[str, dict[str, Any]]:
    """Write ModelOpt AutoCast's FP16 graph of ``source`` to ``output``; returns (tool, options)."""
    modelopt = require("modelopt", "FP16 conversion", package="nvidia-modelopt", extra="calibrate-trt")
    autocast = require("modelopt.onnx.autocast", "FP16 conversion", extra="calibrate-trt")
    onnx = require("onnx", "FP16 conversion", extra="calibrate-trt")
    batch = np.concatenate(list(images.tensors(on_image)), axis=0)
    options: dict[str, Any] = {
        "low_precision_type": "fp16",
        "keep_io_types": True,
        "fp16_scopes": list(FP16_SCOPES),
        "fp32_op_types": list(KEEP_FP32_OPS),
    }
    with tempfile.TemporaryDirectory(prefix="crystal-rt-fp16-") as tmp:
        data = Path(tmp) / "calibration.npz"
        np.savez(data, images=batch)
        copy = Path(tmp) / source.name  # never let a converter touch the user's FP32 model
        shutil.copyfile(source, copy)
        model = convert_fp16(autocast, copy, source, calibration=data)
    onnx.save(model, str(output))
    return f"nvidia-modelopt {modelopt.__version__}", options


def convert_fp16(autocast: Any, path: Path, source: Path, calibration: Path | None = None) -> Any:
    """ModelOpt AutoCast of the graph at ``path``: FP16 inside :data:`FP16_SCOPES`, FP32 elsewhere and
    for :data:`KEEP_FP32_OPS`, input and output types kept. Also run on the INT8 Q/DQ graph for
    TensorRT, whose layers outside the quantized convolutions would otherwise stay FP32."""
    try:
        return autocast.convert_to_mixed_precision(
            str(path),
            low_precision_type="fp16",
            keep_io_types=True,
            nodes_to_exclude=[fp32_node_pattern()],
            op_types_to_exclude=list(KEEP_FP32_OPS),
            calibration_data=None if calibration is None else str(calibration),
            providers=["cpu"],
        )
    except Exception as exc:  # ModelOpt raises assorted exception types
        raise CalibrationError(f"ModelOpt AutoCast failed: {exc}", path=source) from exc
