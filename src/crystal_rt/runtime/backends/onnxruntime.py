"""ONNX Runtime backend (CPU execution provider by default).

One ``InferenceSession`` is shared by all threads: ``InferenceSession.run`` is thread-safe, and
each call allocates its own outputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._lazy import require
from ...errors import InferenceError, InvalidModel
from ...geometry import CORE_INPUT, CORE_OUTPUTS
from .base import Backend, CoreOutputs

OUTPUT_NAMES = CORE_OUTPUTS


def default_threads() -> int:
    """Intra-op threads: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, optimization: str = "all") -> Any:
    ort = require("onnxruntime", "Running an ONNX Runtime engine")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3  # errors only; ours are raised as CrystalRtError
    return opts


def create_session(path: str | os.PathLike[str], options: Any, providers: Sequence[str] | None = None) -> Any:
    """An InferenceSession, with ONNX Runtime's load errors turned into InvalidModel."""
    ort = require("onnxruntime", "Running an ONNX Runtime engine")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModel(f"ONNX Runtime cannot load this model: {first_line[:300]}", path=path) from exc


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, session_options(threads), providers)
        names = [o.name for o in self.session.get_outputs()]
        if sorted(names) != sorted(OUTPUT_NAMES):
            raise InvalidModel(f"outputs {names} are not the core graph's {list(OUTPUT_NAMES)}", path=path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidModel(f"expected one input '{CORE_INPUT}', found {len(inputs)}", path=path)
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)

    def infer(self, images: np.ndarray) -> CoreOutputs:
        try:
            boxes, scores, labels, masks = self.session.run(list(OUTPUT_NAMES), {self.input_name: images})
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed: {str(exc).strip()[:300]}", path=self.path) from exc
        return CoreOutputs(boxes, scores, labels, masks)

    def close(self) -> None:
        self.session = None
