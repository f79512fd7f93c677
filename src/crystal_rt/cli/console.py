"""Shared rich consoles: results to stdout, progress and messages to stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)


def progress() -> Progress:
    """A progress bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs)."""
    return Progress(
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
