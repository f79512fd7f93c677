"""Quoted numbers and their sources agree: each quoted block is rebuilt from its kept output
(benchmarks/results/docs/, written by scripts/refresh_docs.py), and the kept detection is today's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _refresh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("refresh_docs", ROOT / "scripts" / "refresh_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _refresh()


def _quoted(path: Path, anchor: str) -> str:
    text = path.read_text(encoding="utf-8")
    start, end = refresh.fenced_after(text, anchor)
    return str(text[start:end])


def test_readme_output_block_is_the_kept_detect_output() -> None:
    kept = json.loads(refresh.DETECT_JSON.read_text())
    quoted = _quoted(refresh.README, refresh.README_ANCHOR)
    assert quoted == refresh.readme_block(kept), "run scripts/refresh_docs.py"
    shown = json.loads(quoted.replace("...", ""))  # the block is JSON: its numbers, read back
    assert shown["num_instances"] == kept["num_instances"] == len(kept["instances"])
    first = kept["instances"][0]
    assert shown["instances"][0]["score"] == first["score"] == max(i["score"] for i in kept["instances"])
    assert shown["instances"][0]["bbox"] == first["bbox"] and shown["instances"][0]["area"] == first["area"]


def test_kept_detect_output_is_todays() -> None:
    """The demo model on the real drop, in process, gives the kept file's instances."""
    from crystal_rt.assets import demo_model
    from crystal_rt.runtime.detector import Detector

    kept = json.loads(refresh.DETECT_JSON.read_text())
    with Detector.from_onnx(demo_model(), threads=2) as detector:
        result = detector.detect(ROOT / "tests" / "data" / "real" / "97wo_01A_1.jpg").to_dict()
    assert (result["width"], result["height"], result["num_instances"]) == (
        kept["width"],
        kept["height"],
        kept["num_instances"],
    )
    for got, want in zip(result["instances"], kept["instances"], strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=2e-6)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=2e-3)
        assert abs(got["area"] - want["area"]) <= 2


def test_architecture_lint_block_is_todays_lint_imports() -> None:
    kept = refresh.LINT_TXT.read_text()
    assert _quoted(refresh.ARCHITECTURE, refresh.ARCH_ANCHOR) == refresh.lint_block(kept)
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed (the dev extra)")
    today = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    assert refresh.lint_block(today) == refresh.lint_block(kept)
