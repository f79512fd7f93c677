"""Shared rich consoles: results to stdout, progress and messages to stderr."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class _LogProgress(Progress):
    """Where stderr is not a terminal (CI logs, cron mail, a pipe), the bar is not drawn; instead a
    line ``description: N/TOTAL`` is printed at every tenth of the work, so a long run is not silent."""

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if not self.disable:
            return
        task = self._tasks[task_id]
        total = task.total or 0
        step = max(1.0, total / 10)
        if total and (
            task.completed >= total or task.completed // step != (task.completed - advance) // step
        ):
            info(f"{task.description}: {task.completed:.0f}/{total:.0f}")


def progress() -> Progress:
    """A progress bar on stderr (lines at every tenth when stderr is not a terminal, e.g. in CI logs)."""
    return _LogProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def info(message: str) -> None:
    err_console.print(message, highlight=False)


#: library loggers whose warnings a command prints as ``warning: ...`` lines on stderr
WARNING_LOGGERS = ("crystal_rt.bit_depth",)


class _WarningLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(
            f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True
        )


def show_library_warnings() -> None:
    """Print the library's warnings (a 16-bit image that looks 12-bit, ...) as ``warning:`` lines
    (once per process; also where logging is configured otherwise)."""
    for name in WARNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _WarningLines) for h in logger.handlers):
            logger.addHandler(_WarningLines(logging.WARNING))


def latency_table(
    title: str,
    rows: Sequence[tuple[str, str, Mapping[str, float]]],
    count_header: str,
    stages: Sequence[str],
    *,
    median: bool = False,
    name_width: int | None = None,
) -> Table:
    """Per-image stage timings in ms: rows of (image name, count text, timings), optional median row."""
    table = Table(title=title, title_justify="left")
    table.add_column("image", no_wrap=name_width is not None, overflow="ellipsis", max_width=name_width)
    table.add_column(count_header, justify="right")
    for stage in stages:
        table.add_column(stage, justify="right", min_width=min(len(stage), 9), no_wrap=True)
    for name, count, timings in rows:
        table.add_row(name, count, *(f"{timings.get(s, 0.0):.1f}" for s in stages))
    if median and rows:
        table.add_row(
            "median", "", *(f"{statistics.median(t.get(s, 0.0) for _, _, t in rows):.1f}" for s in stages)
        )
    return table
