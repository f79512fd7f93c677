"""What an export of a checkpoint may override (``crystal-rt export``'s options), torch-free.

:func:`crystal_rt.export.api.export_checkpoint` takes these as keyword arguments;
:func:`crystal_rt.build.engine.build_engine` takes them as one :class:`ExportOptions` for a
checkpoint it exports first. ``None`` keeps what the checkpoint (or the preset) says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..spec import PreprocessSpec

__all__ = ["ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    arch: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input_size: int | tuple[int, int] | None = None
    max_detections: int | None = None
    preprocess: PreprocessSpec | None = None
    preset: str | None = None
    clahe: bool | None = None
    clip_limit: float | None = None
    tile_grid: tuple[int, int] | None = None
    training_bit_depth: int | None = None
    validate: bool = True
    score_threshold: float | None = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``export_checkpoint`` (values as given, not copied)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        return out
