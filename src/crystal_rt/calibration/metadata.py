"""Calibration provenance stored in the calibrated ONNX (``metadata_props["crystal_rt.calibration"]``).

``build-engine`` reads it to pick or refuse a graph: an INT8 graph made for TensorRT is refused
by the ONNX Runtime builder (it would run slower than FP32 there) and the other way round.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidModel

CALIBRATION_METADATA_KEY = "crystal_rt.calibration"
TARGETS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class CalibrationInfo:
    """What a calibrated graph is, what made it, and from which images."""

    precision: str  # "int8" | "fp16"
    target: str  # "onnxruntime" | "tensorrt"
    method: str  # e.g. "onnxruntime static QDQ, MinMax" or "modelopt AutoCast fp16"
    tool: str  # package and version that wrote the graph
    source_onnx_sha256: str
    num_images: int = 0
    images_sha256: str = ""
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str | os.PathLike[str]) -> CalibrationInfo:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidModel(f"unreadable {CALIBRATION_METADATA_KEY} metadata ({exc})", path=path) from exc


def read_calibration(metadata: dict[str, str], path: str | os.PathLike[str]) -> CalibrationInfo | None:
    """The calibration record of a graph's metadata, or None for an uncalibrated (FP32) graph."""
    text = metadata.get(CALIBRATION_METADATA_KEY)
    return None if text is None else CalibrationInfo.from_json(text, path)


def copy_metadata(source: Any, target: Any, info: CalibrationInfo) -> None:
    """Give ``target`` (an onnx ModelProto) the source's crystal-rt metadata plus the calibration record."""
    kept = {p.key: p.value for p in source.metadata_props if p.key.startswith("crystal_rt.")}
    kept[CALIBRATION_METADATA_KEY] = info.to_json()
    others = [(p.key, p.value) for p in target.metadata_props if p.key not in kept]
    del target.metadata_props[:]
    for key, value in [*others, *sorted(kept.items())]:
        entry = target.metadata_props.add()
        entry.key, entry.value = key, value
