"""Fixtures for the TensorRT tests: the demo model's backbone+FPN subgraph (TensorRT-RTX builds it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trt_subgraph import cut_backbone_fpn

from crystal_rt.assets import demo_model


@pytest.fixture(scope="session")
def demo_fpn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    target = tmp_path_factory.mktemp("fpn") / "crystals_fpn.onnx"
    return target, cut_backbone_fpn(demo_model(), target)
