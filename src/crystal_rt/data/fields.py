"""Field checks for annotation files: JSON reading and typed errors that name the field.

Every reader (COCO, Labelme, the converters) parses JSON with :func:`read_json` and checks values
with a :class:`FieldCheck`, so that a malformed file fails with one
:class:`~crystal_rt.errors.InvalidDataset` naming the file and the field path, e.g.
``annotations[12].bbox[2]: expected a number, got string 'x'``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NoReturn

from ..errors import InvalidDataset

__all__ = ["FieldCheck", "describe", "read_json"]

_MISSING: Any = object()


class FieldCheck:
    """Type checks that raise :class:`InvalidDataset` naming ``source`` and the field path."""

    def __init__(self, source: str | os.PathLike[str] | None) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> NoReturn:
        raise InvalidDataset(f"{field}: {message}", path=self.source)

    def require(self, obj: dict[str, Any], key: str, field: str) -> Any:
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            self.fail(field, "missing")
        return value

    def as_dict(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"expected an object, got {describe(value)}")
        return value

    def as_list(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(field, f"expected a list, got {describe(value)}")
        return value

    def as_int(self, value: Any, field: str, *, minimum: int | None = None) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"expected an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            self.fail(field, f"expected an integer >= {minimum}, got {value}")
        return value

    def as_number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"expected a number, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(field, f"expected a finite number, got {value}")
        return number

    def as_name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(field, f"expected a non-empty string, got {describe(value)}")
        return value


def describe(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    names: dict[type, str] = {dict: "an object", list: "a list"}
    return names.get(type(value), type(value).__name__)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file (UTF-8, an optional BOM); every failure is an InvalidDataset naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidDataset("file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise InvalidDataset("is a folder, not a JSON file", path=path) from exc
    except OSError as exc:
        raise InvalidDataset(f"cannot read file: {exc.strerror or exc}", path=path) from exc
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidDataset("not a UTF-8 JSON file", path=path) from exc
    except json.JSONDecodeError as exc:
        raise InvalidDataset(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=path
        ) from exc
    except RecursionError as exc:
        raise InvalidDataset("not valid JSON: nested too deeply", path=path) from exc
