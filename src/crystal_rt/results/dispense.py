"""The dispense target: where in a drop to aim a dispenser (an Echo) or a beam, away from crystals.

As CHiMP computes it (DiamondLightSource/xchem-chimp, detector/coord_generator.py): the best-scoring
``drop`` instance; with other instances (crystals) in it, the point of the drop mask minus their
masks farthest from every edge (the maximum of the Euclidean distance transform); with none, the
drop's centre of mass. crystal-rt computes it at the original resolution (CHiMP at its 1352 x 1688
working size, then scales), and reports it in pixels and, given the pixel size, in micrometres as
an offset from the image centre ``(width // 2, height // 2)`` (CHiMP: 2.837 um/px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._lazy import lazy_import
from .detection import Instance

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "Image processing")


DROP_CLASS = "drop"


@dataclass(frozen=True)
class DispenseTarget:
    """A point in original-image pixels; ``clearance_px`` is its distance to the nearest drop edge or
    crystal (None for a centre of mass); the offsets are from the image centre."""

    x: float
    y: float
    method: Literal["distance", "centroid"]
    clearance_px: float | None
    offset_x_px: float
    offset_y_px: float
    um_per_px: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "method": self.method,
            "clearance_px": None if self.clearance_px is None else round(self.clearance_px, 3),
            "offset_x_px": round(self.offset_x_px, 3),
            "offset_y_px": round(self.offset_y_px, 3),
        }
        if self.um_per_px is not None:
            um = self.um_per_px
            out |= {
                "um_per_px": um,
                "offset_x_um": round(self.offset_x_px * um, 3),
                "offset_y_um": round(self.offset_y_px * um, 3),
                "clearance_um": None if self.clearance_px is None else round(self.clearance_px * um, 3),
            }
        return out


def has_drop_class(class_names: Sequence[str]) -> bool:
    return DROP_CLASS in class_names


def dispense_target(
    instances: Sequence[Instance], height: int, width: int, um_per_px: float | None = None
) -> DispenseTarget | None:
    """The dispense target of one image's instances (None without a drop, or for an empty drop mask)."""

    drops = [inst for inst in instances if inst.label_name == DROP_CLASS]
    if not drops:
        return None
    drop = max(drops, key=lambda inst: inst.score).mask
    h, w = drop.crop.shape
    if h == 0 or w == 0 or not drop.crop.any():
        return None
    # a zero border where the crop's edge is the drop's edge; where the crop meets the image's edge
    # the drop may go on (CHiMP's distance transform does not count the image's edge as one)
    region = np.zeros((h + 2, w + 2), np.uint8)
    region[1:-1, 1:-1] = drop.crop
    if drop.x0 == 0:
        region[1:-1, 0] = drop.crop[:, 0]
    if drop.y0 == 0:
        region[0, 1:-1] = drop.crop[0]
    if drop.x0 + w >= width:
        region[1:-1, -1] = drop.crop[:, -1]
    if drop.y0 + h >= height:
        region[-1, 1:-1] = drop.crop[-1]
    others = [inst for inst in instances if inst.label_name != DROP_CLASS]
    for inst in others:
        m = inst.mask
        ch, cw = m.crop.shape
        x0, y0 = max(m.x0, drop.x0), max(m.y0, drop.y0)
        x1, y1 = min(m.x0 + cw, drop.x0 + w), min(m.y0 + ch, drop.y0 + h)
        if x0 >= x1 or y0 >= y1:
            continue
        crystal = m.crop[y0 - m.y0 : y1 - m.y0, x0 - m.x0 : x1 - m.x0]
        window = region[y0 - drop.y0 + 1 : y1 - drop.y0 + 1, x0 - drop.x0 + 1 : x1 - drop.x0 + 1]
        window[crystal] = 0
    if others:
        dist = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        _, best, _, (bx, by) = cv2.minMaxLoc(dist)
        if best <= 0:  # the crystals cover the drop
            return None
        x, y, clearance, method = float(drop.x0 + bx), float(drop.y0 + by), float(best), "distance"
    else:
        ys, xs = np.nonzero(drop.crop)
        x, y, clearance, method = float(drop.x0 + xs.mean()), float(drop.y0 + ys.mean()), None, "centroid"
    return DispenseTarget(
        x=x,
        y=y,
        method=method,  # type: ignore[arg-type]
        clearance_px=clearance,
        offset_x_px=x - width // 2,
        offset_y_px=y - height // 2,
        um_per_px=um_per_px,
    )
