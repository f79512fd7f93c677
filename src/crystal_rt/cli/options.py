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
