"""Fixtures for the CUDA build tests: a private kernel cache and a ptxas resource report (registers,
spills and shared memory per kernel per arch). The report's ~140 rows are printed in pytest's terminal
summary only when asked (``pytest -v`` or ``CRYSTAL_RT_KERNEL_REPORT=1``; ``crystal-rt cuda
--show-resources`` prints the same table); otherwise the summary says in one line how to see it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPORT_KEY = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def resource_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines appended here are printed at the end of the run ("CUDA kernel resources")."""
    return request.config.stash.setdefault(REPORT_KEY, [])


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """CRYSTAL_RT_CACHE pointed at a session temp folder (compiled once per session, never ~/.cache)."""
    root = tmp_path_factory.mktemp("crystal-rt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTAL_RT_CACHE", str(root))
        yield root / "cuda"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT_KEY, [])
    if not lines:
        return
    if config.get_verbosity() < 1 and os.environ.get("CRYSTAL_RT_KERNEL_REPORT", "") in ("", "0"):
        terminalreporter.write_line(
            f"CUDA kernel resources: {len(set(lines))} rows "
            "(pytest -v or CRYSTAL_RT_KERNEL_REPORT=1 prints them)"
        )
        return
    terminalreporter.section("CUDA kernel resources (ptxas -v)")
    terminalreporter.write_line(
        f"{'compiler':8} {'arch':7} {'function':30} {'regs':>4} {'spill st/ld B':>13} {'smem B':>7}"
    )
    for line in sorted(set(lines)):
        terminalreporter.write_line(line)
