"""PreprocessSpec and ModelSpec: the parameters every artifact carries and every backend obeys.

Both are frozen dataclasses with a JSON round-trip. The PreprocessSpec is written into the core
ONNX (``metadata_props["crystal_rt.spec"]``) and every engine manifest, and read back by the
runtime, so an engine never runs with preprocessing other than the one it was trained with.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InvalidModel, InvalidSpec

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

SPEC_METADATA_KEY = "crystal_rt.spec"
MODEL_METADATA_KEY = "crystal_rt.model"


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidSpec(f"{cls.__name__} has no field(s) {', '.join(unknown)}")


@dataclass(frozen=True)
class PreprocessSpec:
    """Decode -> CLAHE -> letterbox to ``input_size`` -> normalize (see DESIGN.md)."""

    clahe: bool = True
    clip_limit: float = 2.0
    tile_grid: tuple[int, int] = (8, 8)
    input_size: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Normalise JSON lists to tuples so that equality and hashing work after a round trip.
        object.__setattr__(self, "tile_grid", tuple(int(v) for v in self.tile_grid))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.input_size < 32 or self.input_size % 32:
            raise InvalidSpec(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if len(self.tile_grid) != 2 or min(self.tile_grid) < 1:
            raise InvalidSpec(f"tile_grid must be two positive integers, got {self.tile_grid}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidSpec("mean and std must have 3 values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tile_grid"] = list(self.tile_grid)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        if not isinstance(data, dict):
            raise InvalidSpec(f"PreprocessSpec must be a JSON object, got {type(data).__name__}")
        _check_keys(cls, data)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"bad PreprocessSpec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"PreprocessSpec is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class ModelSpec:
    """What the core graph computes: architecture, classes and the fixed output size K."""

    arch: str
    num_classes: int
    class_names: tuple[str, ...] = field(default_factory=tuple)
    max_detections: int = 100
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names) or default_class_names(self.num_classes)
        object.__setattr__(self, "class_names", names)
        if self.num_classes < 2:
            raise InvalidSpec(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if len(names) != self.num_classes:
            raise InvalidSpec(
                f"{len(names)} class names for {self.num_classes} classes "
                "(the list includes the background at index 0)"
            )
        if not 1 <= self.max_detections < 3840:
            raise InvalidSpec(f"max_detections must be in 1..3839 (TensorRT TopK), got {self.max_detections}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidSpec(f"score_threshold must be in [0, 1], got {self.score_threshold}")

    def label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict):
            raise InvalidSpec(f"ModelSpec must be a JSON object, got {type(data).__name__}")
        _check_keys(cls, data)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"bad ModelSpec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"ModelSpec is not valid JSON: {exc}") from exc


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """``("__background__", "crystal")`` for two classes, else ``class_1``, ``class_2``, ..."""
    if num_classes == 2:
        return ("__background__", "crystal")
    return ("__background__", *(f"class_{i}" for i in range(1, num_classes)))


def specs_from_metadata(
    metadata: dict[str, str], path: str | os.PathLike[str]
) -> tuple[ModelSpec, PreprocessSpec]:
    """ModelSpec and PreprocessSpec stored in a core ONNX's metadata_props."""
    missing = [k for k in (MODEL_METADATA_KEY, SPEC_METADATA_KEY) if k not in metadata]
    if missing:
        raise InvalidModel(
            f"not a crystal-rt core ONNX (metadata lacks {', '.join(missing)}); "
            "export it with crystal-rt export",
            path=path,
        )
    model = ModelSpec.from_json(metadata[MODEL_METADATA_KEY])
    return model, PreprocessSpec.from_json(metadata[SPEC_METADATA_KEY])
