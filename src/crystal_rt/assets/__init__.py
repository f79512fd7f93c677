"""The files shipped inside the package: the demo model's core ONNX.

``python -m crystal_rt.assets`` prints its path (for ``crystal-rt build-engine PATH`` and scripts)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import InvalidModel

DEMO_MODEL = "crystals.onnx"

__all__ = ["DEMO_MODEL", "demo_model"]


def demo_model() -> Path:
    """The shipped demo model's core ONNX (with its preprocessing recipe and ModelSpec in the metadata)."""
    path = Path(str(resources.files("crystal_rt.assets") / DEMO_MODEL))
    if not path.is_file():
        raise InvalidModel(
            "the demo model is missing from this install; rebuild it with scripts/make_demo_model.sh",
            path=path,
        )
    return path
