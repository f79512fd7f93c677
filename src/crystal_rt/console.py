"""Shared rich consoles: results to stdout, progress and messages to stderr.

User text (file and folder names, paths, messages that quote them, install hints with ``[extra]``)
goes through :func:`shown` before rich prints it, and through :func:`printable` before a log line
holds it: rich would read ``[gpu-cu13]`` or ``eng[v2]`` as markup and drop it, and a name holding a
newline or a terminal escape code would forge a line of its own or reach the terminal.
"""

from __future__ import annotations

import logging
import os
import statistics
import unicodedata
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class _LogProgress(Progress):
    """Where stderr is not a terminal (CI logs, cron mail, a pipe), the bar is not drawn; instead a
    line ``description: N/TOTAL`` is printed at every tenth of the work, so a long run is not silent."""

    quiet = False

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if not self.disable or self.quiet:
            return
        task = self._tasks[task_id]
        total = task.total or 0
        step = max(1.0, total / 10)
        if total and (
            task.completed >= total or task.completed // step != (task.completed - advance) // step
        ):
            info(f"{task.description}: {task.completed:.0f}/{total:.0f}")


def progress(*, quiet: bool = False) -> Progress:
    """A progress bar on stderr (lines at every tenth when stderr is not a terminal, e.g. in CI
    logs); ``quiet``: neither."""
    bar = _LogProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet or not err_console.is_terminal,
    )
    bar.quiet = quiet
    return bar


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: bidirectional overrides and isolates: they reorder what a terminal shows
_BIDI = frozenset((0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def printable(text: object) -> str:
    """``str(text)`` on one line, safe for a terminal or a log: bytes that are not UTF-8 (a file
    name's surrogate escapes) as ``\\xNN``, control characters (newline, carriage return, tab,
    ESC, DEL, C1) and bidirectional overrides as ``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u202e``."""
    value = str(text)
    try:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not a surrogate escape
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value.isprintable():
        return value
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) == "Cc" or code in _BIDI:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def shown(text: object) -> str:
    """User text for a rich line: :func:`printable`, with rich markup escaped."""
    return escape(printable(text))


def info(message: str) -> None:
    """A line of rich markup on stderr: user text in it must come through :func:`shown`."""
    err_console.print(message, highlight=False)


def note(text: object) -> None:
    """A plain line on stderr (no markup: brackets print as they are; one line). The ``log``
    callback for library code whose messages quote paths."""
    err_console.print(shown(text), highlight=False, soft_wrap=True)


def warn(text: object) -> None:
    """``warning: TEXT`` on stderr (TEXT plain, as :func:`note` prints it)."""
    err_console.print(f"[yellow]warning:[/] {shown(text)}", highlight=False, soft_wrap=True)


#: library loggers whose warnings a command prints as ``warning: ...`` lines on stderr
WARNING_LOGGERS = ("crystal_rt.bit_depth",)


class _WarningLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def show_library_warnings() -> None:
    """Print the library's warnings (a 16-bit image that looks 12-bit, ...) as ``warning:`` lines
    (once per process; also where logging is configured otherwise)."""
    for name in WARNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _WarningLines) for h in logger.handlers):
            logger.addHandler(_WarningLines(logging.WARNING))


_SEPARATORS = "_-/. "


def distinct_names(names: Sequence[str], width: int | None) -> list[str]:
    """What tells ``names`` apart in a column ``width`` characters wide. A name that does not fit
    starts at the part where it differs from the name most like it (from the separator ``_ - / .``
    or space before that point: the well in ``RMM3_01_…_A01_drop1.jpg``), after a ``…``, and is cut
    with a ``…`` at the end, never shown by its shared start alone. Names are shown as
    :func:`printable` makes them."""
    out = [printable(n) for n in names]
    if width is None or not out or max(map(len, out)) <= width:
        return out
    width = max(width, 3)
    short = []
    for i, name in enumerate(out):
        if len(name) <= width:
            short.append(name)
            continue
        shared = max(
            (len(os.path.commonprefix([name, other])) for j, other in enumerate(out) if j != i),  # noqa: RUF071
            default=0,
        )
        start = max(name.rfind(c, 0, shared) for c in _SEPARATORS) + 1 if shared else 0
        text = f"…{name[start:]}" if start else name
        short.append(text if len(text) <= width else f"{text[: width - 1]}…")
    return short


def latency_table(
    title: str,
    rows: Sequence[tuple[str, str, Mapping[str, float]]],
    count_header: str,
    stages: Sequence[str],
    *,
    median: bool = False,
    name_width: int | None = None,
) -> Table:
    """Per-image stage timings in ms: rows of (image name, count text, timings), optional median row.

    ``title`` is rich markup (user text in it through :func:`shown`); the names are user text. The
    image column gets ``name_width`` characters, or what the stdout console leaves beside the other
    columns; names that do not fit are shortened to what tells them apart (:func:`distinct_names`)."""

    def table_of(with_names: bool) -> Table:
        table = Table(title=title, title_justify="left")
        if with_names:
            table.add_column("image", no_wrap=True, overflow="ellipsis")
        table.add_column(count_header, justify="right")
        for stage in stages:
            table.add_column(stage, justify="right", min_width=min(len(stage), 9), no_wrap=True)
        return table

    cells = [(count, *(f"{timings.get(s, 0.0):.1f}" for s in stages)) for _, count, timings in rows]
    medians = [f"{statistics.median(t.get(s, 0.0) for _, _, t in rows):.1f}" for s in stages]
    if name_width is None:
        others = table_of(False)
        for row in cells:
            others.add_row(*row)
        if median and rows:
            others.add_row("", *medians)
        used = Measurement.get(console, console.options, others).maximum
        name_width = max(6, console.width - used - 3)  # the column's padding and rule
    table = table_of(True)
    names = distinct_names([name for name, _, _ in rows], name_width)
    for name, row in zip(names, cells, strict=True):
        table.add_row(escape(name), *row)
    if median and rows:
        table.add_row("median", "", *medians)
    return table
