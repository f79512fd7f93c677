"""Options several commands share (light: nothing heavy is imported to build the parser)."""

from __future__ import annotations

import argparse

#: the pipeline's stage policies (crystal_rt.runtime.pipeline.STAGE_POLICIES; a test keeps them equal)
STAGE_CHOICES = ("auto", "cpu")


def add_stages(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stages",
        choices=STAGE_CHOICES,
        default="auto",
        help="where CLAHE, letterbox and mask paste run: auto (on the engine's device where it has "
        "kernels for them: a TensorRT engine runs them on the GPU) or cpu (all but the engine on the "
        "CPU, e.g. for parity checks); default auto",
    )


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1e6:  # also rejects NaN and inf
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_um_per_px(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--um-per-px",
        type=positive_float,
        help="pixel size in micrometres (CHiMP's imager: 2.837): models with a drop class then report "
        "the dispense target as an offset from the image centre in micrometres too",
    )
