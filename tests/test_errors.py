"""The CrystalRtError family is used precisely: specific classes, all exported, ImageTooLarge for 413."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import crystal_rt
from crystal_rt import errors

SRC = Path(__file__).resolve().parents[1] / "src" / "crystal_rt"


def _error_classes() -> list[type[errors.CrystalRtError]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.CrystalRtError) and obj.__module__ == errors.__name__
    ]


def test_every_error_is_exported() -> None:
    names = {cls.__name__ for cls in _error_classes()}
    assert names <= set(errors.__all__), names - set(errors.__all__)
    assert names <= set(crystal_rt.__all__), names - set(crystal_rt.__all__)
    for name in errors.__all__:
        assert getattr(crystal_rt, name) is getattr(errors, name)


def test_no_bare_base_class_raised_in_the_library() -> None:
    """``CrystalRtError(...)`` itself is only the base: every failure names a specific class."""
    bare: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CrystalRtError":
                bare.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bare, bare


def test_specific_errors_keep_their_families() -> None:
    assert issubclass(errors.ImageTooLarge, errors.InvalidImage)
    assert issubclass(errors.LintError, errors.ExportError)
    assert errors.ValidationFailed is errors.ParityError  # one failure, one class
    err = errors.ParityError("2 problem(s)", report={"failures": 2}, path="m.onnx")
    assert err.report == {"failures": 2} and str(err) == "m.onnx: 2 problem(s)"
    assert "pip install matplotlib" in str(errors.MissingDependency("matplotlib", "", "Plotting"))
    assert 'pip install "crystal-rt[cpu]"' in str(errors.MissingDependency("onnxruntime", "cpu", "Running"))
