"""TensorRT's shipped plugins, registered before a plan is parsed or deserialized (RoiAlign maps to
the ROIAlign_TRT plugin, which only ``init_libnvinfer_plugins`` registers)."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any


def init_plugins(trt: ModuleType, logger: Any) -> None:
    """Register TensorRT's shipped plugins (ROIAlign_TRT for RoiAlign) before parsing."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is not None:
        init(logger, "")


def load_plugin_libraries(owner: Any, libraries: list[str]) -> list[str]:
    """Load plugin ``libraries`` into the plugin registry of ``owner`` (a builder or runtime), as trtexec
    does for a version-compatible plan's libraries; returns those that loaded. A library missing on
    this machine is skipped: the copy serialized into the plan still serves the lean runtime."""
    registry_of = getattr(owner, "get_plugin_registry", None)
    registry = registry_of() if callable(registry_of) else None
    if registry is None or not hasattr(registry, "load_library"):
        return []
    loaded = []
    for library in libraries:
        for candidate in dict.fromkeys((library, os.path.basename(library))):
            try:
                handle = registry.load_library(candidate)
            except (RuntimeError, OSError, TypeError):
                handle = None
            if handle is not None:
                loaded.append(candidate)
                break
    return loaded
