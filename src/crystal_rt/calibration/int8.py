"""INT8 Q/DQ graphs, one per target engine.

* ``onnxruntime`` (the CPU engine): ONNX Runtime's static quantization in QDQ format, per-channel
  signed 8-bit weights, unsigned 8-bit activations, MinMax calibration. ONNX Runtime fuses these
  Q/DQ pairs into its integer (VNNI) kernels. ModelOpt's graph runs *slower* than FP32 there
  (it is shaped for TensorRT's fusions), so it is never used for this target.
* ``tensorrt``: NVIDIA ModelOpt (``modelopt.onnx.quantization``), symmetric INT8 with max
  calibration, the Q/DQ placement TensorRT's strongly typed builder expects; then AutoCast turns the
  float layers inside the convolutional scopes (residual adds, ReLU, pooling, FPN upsampling, the
  heads' non-quantized layers) to FP16, as the FP16 route does, so that a strongly typed INT8 plan is
  not slower than FP16 for layers INT8 does not cover (``calibration/fp16.py``). ModelOpt pins an
  older onnx and onnxruntime-gpu, so it lives in its own install (``crystal-rt[calibrate-trt]``).

Both quantize only the network's matrix products (Conv, ConvTranspose, Gemm, MatMul): RoiAlign,
NMS, anchor and box decoding arithmetic and the mask sigmoid stay in FP32.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import CalibrationError
from .fp16 import FP16_SCOPES, KEEP_FP32_OPS, convert_fp16
from .images import CalibrationImages

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer advises 'pre-processing' through the root logger; keep the CLI clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnxruntime(
    source: Path, output: Path, images: CalibrationImages, on_image: Callable[[], None] | None = None
) -> tuple[str, dict[str, Any]]:
    """Write ONNX Runtime's static QDQ quantization of ``source`` to ``output``; returns (tool, options)."""
    ort = require("onnxruntime", "INT8 calibration", extra="calibrate")
    quant = require("onnxruntime.quantization", "INT8 calibration", package="onnx", extra="calibrate")
    shape_inference = require("onnxruntime.quantization.shape_inference", "INT8 calibration",
                              package="onnx", extra="calibrate")  # fmt: skip

    class Reader(quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self._tensors = images.tensors(on_image)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._tensors, None)
            return None if tensor is None else {"images": tensor}

    options: dict[str, Any] = {
        "pre_process": "quant_pre_process (optimised, no symbolic shapes)",
        "format": "QDQ",
        "op_types": list(QUANTIZED_OPS),
        "per_channel": True,
        "weights": "int8",
        "activations": "uint8",
        "calibration": "MinMax",
    }
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="crystal-rt-ort-quant-") as tmp:
        # ONNX Runtime's own pre-processing (graph optimisation; the symbolic shape inference is
        # skipped, the graph's shapes are data-dependent) folds what sits between a convolution and
        # its activation. Without it ORT fused only 17 of a ResNet-50-FPN's 81 Q/DQ convolutions into
        # integer kernels and the INT8 graph ran slower than FP32; with it all 81 fuse.
        prepared = Path(tmp) / "prepared.onnx"
        try:
            shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # the pre-processor raises plain Exceptions with its reason
            raise CalibrationError(f"ONNX Runtime could not prepare the graph: {exc}", path=source) from exc
        try:
            quant.quantize_static(
                str(prepared),
                str(output),
                Reader(),
                quant_format=quant.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=quant.QuantType.QUInt8,
                weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
            )
        except CalibrationError:
            raise
        except Exception as exc:  # the quantizer raises plain Exceptions with its reason
            raise CalibrationError(f"ONNX Runtime could not quantize the graph: {exc}", path=source) from exc
    return f"onnxruntime {ort.__version__}", options


def quantize_modelopt(
    source: Path, output: Path, images: CalibrationImages, on_image: Callable[[], None] | None = None
) -> tuple[str, dict[str, Any]]:
    """Write ModelOpt's TensorRT-style INT8 Q/DQ graph of ``source``; returns (tool, options)."""
    purpose = "INT8 calibration for TensorRT"
    modelopt = require("modelopt", purpose, package="nvidia-modelopt", extra="calibrate-trt")
    mq = require("modelopt.onnx.quantization", purpose, package="nvidia-modelopt", extra="calibrate-trt")
    batch = np.concatenate(list(images.tensors(on_image)), axis=0)
    options: dict[str, Any] = {
        "mode": "int8",
        "calibration": "max",
        "op_types": list(QUANTIZED_OPS),
        "high_precision_dtype": "fp32",
        "fp16_outside_int8": {"scopes": list(FP16_SCOPES), "fp32_op_types": list(KEEP_FP32_OPS)},
    }
    with tempfile.TemporaryDirectory(prefix="crystal-rt-modelopt-") as tmp:
        # ModelOpt rewrites the file it is given (shape inference saved in place): hand it a copy.
        copy = Path(tmp) / source.name
        shutil.copyfile(source, copy)
        qdq = Path(tmp) / "qdq.onnx"
        _run_modelopt_quantize(mq, copy, qdq, batch, source)
        autocast = require(
            "modelopt.onnx.autocast", purpose, package="nvidia-modelopt", extra="calibrate-trt"
        )
        onnx = require("onnx", purpose, extra="calibrate-trt")
        onnx.save(convert_fp16(autocast, qdq, source), str(output))
    return f"nvidia-modelopt {modelopt.__version__}", options


def _run_modelopt_quantize(mq: Any, copy: Path, output: Path, batch: np.ndarray, source: Path) -> None:
    try:
        mq.quantize(
            str(copy),
            quantize_mode="int8",
            calibration_data={"images": batch},
            calibration_method="max",
            calibration_eps=["cpu"],
            op_types_to_quantize=list(QUANTIZED_OPS),
            high_precision_dtype="fp32",
            output_path=str(output),
            log_level="ERROR",
        )
    except Exception as exc:  # ModelOpt raises assorted exception types
        raise CalibrationError(f"ModelOpt could not quantize the graph: {exc}", path=source) from exc
