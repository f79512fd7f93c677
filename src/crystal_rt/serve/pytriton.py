"""``crystal-rt serve ENGINE --triton``: the Detector behind a real Triton Inference Server (PyTriton).

Triton gives HTTP and gRPC endpoints, dynamic batching, health and metrics for scale-out; the model
``NAME`` takes ``image`` (the encoded image file, bytes, shape [1]) and answers ``result`` (the
JSON of ``POST /v1/detect``, bytes, shape [1]). A bad image answers an ``{"error": ...}`` JSON
for that request only; the server keeps serving.

PyTriton 0.7 needs numpy < 2, which OpenCV 5 does not support: install it in its own venv with
``pip install ".[triton]"`` (numpy < 2, OpenCV 4.10). Triton binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._lazy import require
from ..errors import CrystalRtError

if TYPE_CHECKING:
    from ..runtime.detector import Detector


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def result_bytes(detector: Detector, data: bytes, score_threshold: float | None = None) -> bytes:
    """The result JSON of one encoded image, or an ``{"error": ...}`` JSON naming what is wrong."""
    try:
        result = detector.detect(data, name="<triton>", score_threshold=score_threshold)
    except CrystalRtError as exc:
        return json.dumps({"error": {"type": type(exc).__name__, "message": exc.message}}).encode()
    return result.to_json(indent=None).encode()


def make_infer(detector: Detector) -> Callable[..., dict[str, np.ndarray]]:
    """PyTriton's batched infer function: ``image`` [B, 1] bytes -> ``result`` [B, 1] bytes."""
    decorators = require("pytriton.decorators", "crystal-rt serve --triton", package="nvidia-pytriton",
                         extra="triton")  # fmt: skip

    @decorators.batch  # type: ignore[misc,untyped-decorator]
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        out = [result_bytes(detector, bytes(row[0])) for row in image]
        return {"result": np.array(out, dtype=object).reshape(-1, 1)}

    return infer  # type: ignore[no-any-return]


def _stub_library_path() -> None:
    """Triton's Python stub must load this interpreter's libpython: put its folder first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in current.split(os.pathsep):
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)


def bind_triton(
    detector: Detector,
    *,
    model_name: str,
    host: str = "127.0.0.1",
    ports: TritonPorts = TritonPorts(),
    max_batch_size: int = 4,
) -> Any:
    """A ``pytriton.triton.Triton`` with ``detector`` bound as ``model_name``: ``.serve()`` blocks
    until Ctrl-C; ``.run()`` starts it in the background (then ``.stop()``)."""
    triton_mod = require("pytriton.triton", "crystal-rt serve --triton", package="nvidia-pytriton",
                         extra="triton")  # fmt: skip
    config_mod = require("pytriton.model_config", "crystal-rt serve --triton", package="nvidia-pytriton",
                         extra="triton")  # fmt: skip
    _stub_library_path()
    config = triton_mod.TritonConfig(
        http_address=host, grpc_address=host, http_port=ports.http, grpc_port=ports.grpc,
        metrics_port=ports.metrics, allow_metrics=True, metrics_address=host,
    )  # fmt: skip
    triton = triton_mod.Triton(config=config)
    triton.bind(
        model_name=model_name,
        infer_func=make_infer(detector),
        inputs=[config_mod.Tensor(name="image", dtype=bytes, shape=(1,))],
        outputs=[config_mod.Tensor(name="result", dtype=bytes, shape=(1,))],
        config=config_mod.ModelConfig(max_batch_size=max_batch_size),
        strict=True,
    )
    return triton
