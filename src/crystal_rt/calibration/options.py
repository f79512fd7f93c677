"""How calibration runs (``crystal-rt calibrate``'s and ``build-engine --calib``'s options), torch-free.

:func:`crystal_rt.calibration.api.calibrate` takes these as keyword arguments;
:func:`crystal_rt.build.engine.build_engine` takes them as one :class:`CalibrationOptions`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_HELD_OUT", "DEFAULT_MAX_MAP_DROP", "DEFAULT_NUM_IMAGES", "CalibrationOptions"]

DEFAULT_NUM_IMAGES = 32
DEFAULT_MAX_MAP_DROP = 0.01
DEFAULT_HELD_OUT = 16


@dataclass(frozen=True)
class CalibrationOptions:
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    val: str | os.PathLike[str] | None = None  # a COCO JSON with ground truth for the accuracy check
    held_out: int = DEFAULT_HELD_OUT
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    force: bool = False
    recursive: bool = False
    on_step: Callable[[str, int], None] | None = None
    on_image: Callable[[], None] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``calibrate``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
