"""A TensorRT logger that keeps what TensorRT said, so failures can quote it (shared by both modules).

TensorRT registers the first logger a process gives it and ignores later ones (with a warning), so
there is one logger per TensorRT module, reused by every builder, parser and runtime.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from ...cuda.probe import probe
from ...errors import BackendUnavailable

KEPT_SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING")
_LOGGERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_logger(trt: ModuleType) -> Any:
    """The process-wide capturing logger for ``trt`` (a ``trt.ILogger`` subclass instance).

    It has ``lines`` (recent warnings and errors), ``mark()``/``since(mark)`` to read what one step
    logged *on the calling thread* (TensorRT logs from the thread that called it; another thread's
    build or enqueue must not be quoted as this one's failure), and ``echo``, an optional callable
    receiving each kept line."""
    key = getattr(trt, "__name__", "tensorrt")
    with _LOCK:
        if key not in _LOGGERS:
            _LOGGERS[key] = _make_logger(trt)
        return _LOGGERS[key]


def _make_logger(trt: ModuleType) -> Any:
    severities = trt.ILogger.Severity
    keep_upto = max(int(getattr(severities, name)) for name in KEPT_SEVERITIES)  # WARNING

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.lines: deque[str] = deque(maxlen=500)
            self._threads: deque[int] = deque(maxlen=500)  # who logged each of ``lines``
            self.count = 0
            self.echo: Callable[[str], None] | None = None
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            # TensorRT's Python trampoline calls this for every message, VERBOSE included, holding the
            # GIL: drop what is not kept with one integer comparison first
            if int(severity) > keep_upto:
                return
            name = getattr(severity, "name", str(severity))
            line = f"[{name}] {msg}"
            with self._lock:
                self.lines.append(line)
                self._threads.append(threading.get_ident())
                self.count += 1
            if self.echo is not None:
                self.echo(line)

        def mark(self) -> int:
            return self.count

        def since(self, mark: int, threads: Collection[int] = ()) -> list[str]:
            """The lines logged since ``mark`` by this thread's calls (and those of ``threads``: a
            build that runs in a worker thread)."""
            mine = {threading.get_ident(), *threads}
            with self._lock:
                new = min(self.count - mark, len(self.lines))
                if new <= 0:
                    return []
                pairs = zip(list(self.lines)[-new:], list(self._threads)[-new:], strict=True)
                return [line for line, who in pairs if who in mine]

    return CapturingLogger()


def create(factory: Callable[[Any], Any], logger: Any, what: str) -> Any:
    """``trt.Builder(logger)`` / ``trt.Runtime(logger)``, or one sentence where TensorRT cannot start:
    pybind raises "factory function returned nullptr" when TensorRT's CUDA initialisation fails
    (error 35: the driver is older than TensorRT's CUDA)."""

    mark = logger.mark()
    try:
        made = factory(logger)
    except (TypeError, RuntimeError) as exc:
        made, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        error = "it returned None"
    if made is not None:
        return made

    said = logger.since(mark)
    state = probe()
    hint = (
        state.message
        if not state.usable
        else (
            "the NVIDIA driver may be older than the CUDA this TensorRT was built for; update the driver or "
            "install the TensorRT for the driver's CUDA major"
        )
    )
    raise BackendUnavailable(
        f"TensorRT could not create its {what} ({summarize(said) if said else error}): {hint}"
    )


def out_of_memory(lines: list[str]) -> bool:
    """Whether TensorRT's log says it ran out of GPU memory."""
    text = " ".join(lines).lower()
    return "out of memory" in text or "could not be allocated" in text or "cudaerrormemoryallocation" in text


def summarize(lines: list[str], limit: int = 3) -> str:
    """The last ``limit`` errors (else warnings) of ``lines``, joined for a one-sentence message."""
    errors = [ln for ln in lines if not ln.startswith("[WARNING]")] or lines
    text = " | ".join(ln.strip().replace("\n", " ") for ln in errors[-limit:])
    return text[:600] if text else "TensorRT logged nothing"
