"""A TensorRT logger that keeps what TensorRT said, so failures can quote it (shared by both modules).

TensorRT registers the first logger a process gives it and ignores later ones (with a warning), so
there is one logger per TensorRT module, reused by every builder, parser and runtime.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

KEPT_SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING")
_LOGGERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_logger(trt: ModuleType) -> Any:
    """The process-wide capturing logger for ``trt`` (a ``trt.ILogger`` subclass instance).

    It has ``lines`` (recent warnings and errors), ``mark()``/``since(mark)`` to read what one step
    logged, and ``echo``, an optional callable receiving each kept line."""
    key = getattr(trt, "__name__", "tensorrt")
    with _LOCK:
        if key not in _LOGGERS:
            _LOGGERS[key] = _make_logger(trt)
        return _LOGGERS[key]


def _make_logger(trt: ModuleType) -> Any:
    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.lines: deque[str] = deque(maxlen=500)
            self.count = 0
            self.echo: Callable[[str], None] | None = None
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name not in KEPT_SEVERITIES:
                return
            line = f"[{name}] {msg}"
            with self._lock:
                self.lines.append(line)
                self.count += 1
            if self.echo is not None:
                self.echo(line)

        def mark(self) -> int:
            return self.count

        def since(self, mark: int) -> list[str]:
            with self._lock:
                new = self.count - mark
                return list(self.lines)[-new:] if new > 0 else []

    return CapturingLogger()


def summarize(lines: list[str], limit: int = 3) -> str:
    """The last ``limit`` errors (else warnings) of ``lines``, joined for a one-sentence message."""
    errors = [ln for ln in lines if not ln.startswith("[WARNING]")] or lines
    text = " | ".join(ln.strip().replace("\n", " ") for ln in errors[-limit:])
    return text[:600] if text else "TensorRT logged nothing"
