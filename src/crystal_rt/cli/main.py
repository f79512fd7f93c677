"""``crystal-rt``: one module per subcommand; heavy imports happen inside each command.

User errors (the CrystalRtError family) are printed as one line without a traceback and exit 1;
``--debug`` shows the traceback. An optional package that is missing (torch in an edge install, ...)
is such an error too: one line naming the install extra, whichever code path imported it first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .._lazy import missing_dependency
from .._version import __version__
from ..console import err_console, show_library_warnings, shown
from ..errors import CrystalRtError, KernelBuildError
from ..testing import ENV_VAR, simulated_gpu_from_env

# subcommand -> module under crystal_rt.cli (each defines add_parser(subparsers) and run(args) -> int)
COMMANDS = {
    "demo": "demo",
    "export": "export",
    "calibrate": "calibrate",
    "build-engine": "build_engine",
    "detect": "detect",
    "compare": "compare",
    "inspect": "inspect",
    "convert": "convert",
    "synth": "synth",
    "train": "train",
    "evaluate": "evaluate",
    "cuda": "cuda",
    "serve": "serve",
    "watch": "watch",
    "export-triton": "export_triton",
    "doctor": "doctor",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystal-rt",
        description="Export, build and run Mask R-CNN protein-crystal segmentation engines.",
    )
    parser.add_argument("--version", action="version", version=f"crystal-rt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument(
        "--simulated-gpu",
        action="store_true",
        help="test support: run on crystal-rt's simulated GPU (CUDA kernels in a CPU emulator, TensorRT "
        "engines on ONNX Runtime), as $CRYSTAL_RT_SIMULATED_GPU=1 does; see crystal_rt.testing",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"crystal_rt.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2

    show_library_warnings()
    try:
        with _simulation(args.simulated_gpu):
            code: int = args.run(args)
        return code
    except CrystalRtError as exc:
        if args.debug:
            raise
        print_error(exc)
        return 1
    except ImportError as exc:  # an optional package that no require() guarded: still one line
        missing = missing_dependency(exc, f"crystal-rt {args.command}")
        if missing is None or args.debug:
            raise
        print_error(missing)
        return 1
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


def print_error(exc: CrystalRtError) -> None:
    """``error: MESSAGE`` on stderr, on one line (a compiler log, if any, below it)."""
    text = f"{exc.path}: {exc.message}" if exc.path else exc.message
    lines = [f"[bold red]error:[/] {shown(text)}"]
    if isinstance(exc, KernelBuildError):
        lines = [f"[bold red]error:[/] {shown(text.split(chr(10))[0])}"]
        lines += [shown(line) for line in exc.log.rstrip().splitlines()]
    for line in lines:
        err_console.print(line, highlight=False, soft_wrap=True)


@contextmanager
def _simulation(requested: bool) -> Iterator[None]:
    """The simulated GPU where asked for (flag or environment), else nothing."""

    before = os.environ.get(ENV_VAR)
    if requested:
        os.environ[ENV_VAR] = "1"  # child processes (bench's cold starts) simulate too
    try:
        with simulated_gpu_from_env():
            yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


if __name__ == "__main__":
    sys.exit(main())
