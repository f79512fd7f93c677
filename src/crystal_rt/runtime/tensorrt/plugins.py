"""TensorRT's shipped plugins, registered before a plan is parsed or deserialized (RoiAlign maps to
the ROIAlign_TRT plugin, which only ``init_libnvinfer_plugins`` registers)."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def init_plugins(trt: ModuleType, logger: Any) -> None:
    """Register TensorRT's shipped plugins (ROIAlign_TRT for RoiAlign) before parsing."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is not None:
        init(logger, "")
