"""Detection results: instances with box, crop-local mask, COCO RLE, area and centroid."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .rle import crop_to_rle

if TYPE_CHECKING:
    from .dispense import DispenseTarget


@dataclass(frozen=True)
class InstanceMask:
    """A binary mask stored only inside its bounding crop: ``crop`` sits at (x0, y0)."""

    crop: np.ndarray  # bool (h, w)
    x0: int
    y0: int
    image_height: int
    image_width: int

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    @cached_property
    def rle(self) -> dict[str, Any]:
        """COCO compressed RLE, computed once (the JSON and COCO writers both need it)."""
        return crop_to_rle(self.crop, self.x0, self.y0, self.image_height, self.image_width)

    def to_rle(self) -> dict[str, Any]:
        return dict(self.rle)

    def to_full(self) -> np.ndarray:
        """The mask at full image size (allocates H x W; for tests and overlays)."""
        full = np.zeros((self.image_height, self.image_width), dtype=bool)
        h, w = self.crop.shape
        full[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.crop
        return full


@dataclass(frozen=True)
class Instance:
    """One detected crystal (or other class) in original-image pixels."""

    label: int
    label_name: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    mask: InstanceMask

    @property
    def bbox_xywh(self) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.box
        return (x1, y1, x2 - x1, y2 - y1)

    @property
    def area(self) -> int:
        return self.mask.area

    @cached_property
    def centroid(self) -> dict[str, float]:
        """Mask centroid as ``{"x", "y"}``; the box centre when the mask is empty."""
        ys, xs = np.nonzero(self.mask.crop)
        if xs.size == 0:
            x1, y1, x2, y2 = self.box
            return {"x": (x1 + x2) / 2.0, "y": (y1 + y2) / 2.0}
        return {"x": float(xs.mean()) + self.mask.x0, "y": float(ys.mean()) + self.mask.y0}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "label_name": self.label_name,
            "score": round(float(self.score), 6),
            "bbox": [round(float(v), 3) for v in self.bbox_xywh],
            "mask": self.mask.to_rle(),
            "area": self.area,
            "centroid": {k: round(v, 3) for k, v in self.centroid.items()},
        }


@dataclass
class DetectionResult:
    """All instances found in one image, with per-stage timings in milliseconds and the device that
    ran each stage (``"cpu"``, ``"cuda:0"``; ``"skipped"`` for a stage the recipe does not have)."""

    width: int
    height: int
    instances: list[Instance]
    image: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    #: for a model with a ``drop`` class: where to dispense (results/dispense.py); None: no drop found
    dispense_target: DispenseTarget | None = None
    #: whether the model has a ``drop`` class (the JSON then always holds ``dispense_target``)
    reports_dispense: bool = False
    #: how many tiles the image was detected in (0: the whole image at once)
    windows: int = 0

    def __len__(self) -> int:
        return len(self.instances)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "num_instances": len(self.instances),
            "instances": [inst.to_dict() for inst in self.instances],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "devices": dict(self.devices),
        }
        if self.windows:
            out["tiles"] = self.windows
        if self.reports_dispense:
            out["dispense_target"] = None if self.dispense_target is None else self.dispense_target.to_dict()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
