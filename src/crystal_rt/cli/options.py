"""Options several commands share (light: nothing heavy is imported to build the parser)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime.detector import Detector

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


# --- parse-time validators (argparse ``type=``): one sentence each, never a traceback ----------
def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
    if kind is float and math.isnan(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (score and IoU thresholds)."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (a free one) to 65535."""
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(_number(text, float))
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float))
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_score_threshold(parser: argparse.ArgumentParser, help: str, **kwargs: object) -> None:
    """``--score-threshold`` in [0, 1], checked when the command line is parsed."""
    parser.add_argument("--score-threshold", type=unit_float, help=help, **kwargs)  # type: ignore[arg-type]


def output_dir(text: str) -> Path:
    """A folder to write into (made when missing); an existing file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def output_file(text: str) -> Path:
    """A file to write (its folders are made when missing); an existing folder is refused."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, not a folder")
            break
    return path


def report_file(text: str) -> Path:
    """A report file (--json, --pr-curve) in a folder that exists; a folder is refused."""
    path = output_file(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    return path


def add_um_per_px(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--um-per-px",
        type=positive_float,
        help="pixel size in micrometres (CHiMP's imager: 2.837): models with a drop class then report "
        "the dispense target as an offset from the image centre in micrometres too",
    )


def tile_size(text: str) -> int:
    value = int(_number(text, int))
    if not 32 <= value <= 16384:
        raise argparse.ArgumentTypeError(f"must be a tile side in 32..16384 pixels, got {text}")
    return value


def overlap(text: str) -> float:
    value = float(_number(text, float))
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be a fraction of a tile in [0, 0.5], got {text}")
    return value


def add_tiling(parser: argparse.ArgumentParser) -> None:
    """``--tiles off|auto|on``, ``--tile-size N``, ``--overlap F`` (tiled inference for small crystals)."""
    parser.add_argument(
        "--tiles",
        choices=("off", "auto", "on"),
        help="detect in overlapping tiles at the engine's native scale (small crystals in large images): "
        "auto tiles when fitting the image into the engine input would shrink it more than 1.5x; "
        "default off (on with --tile-size)",
    )
    parser.add_argument(
        "--tile-size",
        type=tile_size,
        metavar="N",
        help="tile side in image pixels (default: the engine's input size, i.e. scale 1); implies --tiles on",
    )
    parser.add_argument(
        "--overlap",
        type=overlap,
        default=0.25,
        metavar="F",
        help="tile overlap, a fraction of a tile (default 0.25)",
    )


def tiling_from_args(args: argparse.Namespace) -> Any:
    """The Tiling the options ask for (None: whole images)."""
    mode = args.tiles or ("on" if args.tile_size else "off")
    if mode == "off":
        return None
    from ..runtime.tiling import Tiling

    return Tiling(mode=mode, tile_size=args.tile_size, overlap=args.overlap)  # type: ignore[arg-type]


def detector_from_args(args: argparse.Namespace, **extra: Any) -> Detector:
    """``Detector.load(ENGINE)`` with the options every running command shares (threshold, threads,
    stages, um/px, tiles, bit depth); ``extra`` adds the command's own (serve: max_pixels)."""
    from ..runtime.detector import Detector as _Detector  # here, not at the top: --help stays light

    return _Detector.load(
        args.engine,
        score_threshold=args.score_threshold,
        threads=args.threads,
        stages=args.stages,
        um_per_px=args.um_per_px,
        tiling=tiling_from_args(args),
        bit_depth=args.bit_depth,
        **extra,
    )


def bit_depth(text: str) -> int:
    """Significant bits of 16-bit images, 1..16."""
    value = int(_number(text, int))
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be a bit depth in 1..16, got {text}")
    return value


def add_bit_depth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bit-depth",
        type=bit_depth,
        metavar="N",
        help="significant bits of 16-bit images (12 for a 12-bit camera writing 16-bit files), over "
        "what the file says (TIFF MaxSampleValue/BitsPerSample, PNG sBIT): they are expanded to the "
        "full 16-bit range before CLAHE; 8-bit images are not changed (default: the file's, else 16)",
    )
