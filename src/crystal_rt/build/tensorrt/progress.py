"""A build monitor on ``trt.IProgressMonitor`` (TensorRT 10+, TensorRT-RTX): cancellable (Ctrl-C stops
the build through it), and drawing a rich progress bar where asked."""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_monitor(trt: ModuleType, show: bool = True) -> Any:
    """An ``IProgressMonitor`` (drawing a rich progress bar on stderr when ``show``), or None where the
    API is absent.

    It has ``cancel()`` (the next ``step_complete`` returns False, which stops the build),
    ``cancelled`` and ``close()``."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class RichMonitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.cancelled = False
            self._tasks: dict[str, Any] = {}
            self._lock = threading.Lock()
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
                disable=not show,
            )
            self._progress.start()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            indent = "  " if parent_phase else ""
            with self._lock:
                self._tasks[phase_name] = self._progress.add_task(f"{indent}{phase_name}", total=num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                task = self._tasks.get(phase_name)
                if task is not None:
                    self._progress.update(task, completed=step + 1)
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                task = self._tasks.pop(phase_name, None)
                if task is not None:
                    self._progress.remove_task(task)

        def cancel(self) -> None:
            self.cancelled = True

        def close(self) -> None:
            self._progress.stop()

    return RichMonitor()
