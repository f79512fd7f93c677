"""``crystal-rt build-engine MODEL -o DIR``: build the best engine for this machine."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from ..build.engine import build_engine, check_precision, choose_backend, is_checkpoint, require_export
from ..build.tensorrt.options import BuildOptions
from ..calibration.options import CalibrationOptions
from ..console import console, err_console, note, shown
from ..errors import InvalidOption
from .calibrate import add_calibration_options
from .export import add_checkpoint_options, checkpoint_options
from .options import output_dir


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "build-engine",
        help="build an engine for this machine (TensorRT with a GPU, else ONNX Runtime)",
        description=__doc__ + " MODEL is a core ONNX (no torch needed) or a checkpoint "
        "(exported first; needs the export extra).",
    )
    p.add_argument("model", type=Path, help="core ONNX from crystal-rt export, or a checkpoint")
    p.add_argument(
        "-o",
        "--output",
        type=output_dir,
        required=True,
        help="folder for NAME.onnx/.plan + NAME.manifest.json",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "tensorrt", "onnxruntime-trt", "onnxruntime-cuda"),
        default="auto",
        help="auto (default): TensorRT where it is installed and a GPU is usable, else ONNX Runtime's "
        "TensorRT provider, else its CUDA provider (onnxruntime-gpu), else ONNX Runtime on the CPU; each "
        "choice is printed with its reason",
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--name", help="engine name (default: the model file's name)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    calib = p.add_argument_group(
        "INT8 calibration (--precision int8 from an FP32 model; options as in crystal-rt calibrate)"
    )
    calib.add_argument("--calib", type=Path, metavar="DIR", help="folder of typical images to calibrate on")
    add_calibration_options(calib)
    add_tensorrt_options(p)
    add_checkpoint_options(p)
    p.set_defaults(run=run)


def add_tensorrt_options(p: argparse.ArgumentParser) -> None:
    """trtexec-like TensorRT builder options (ignored by ONNX Runtime)."""
    trt = p.add_argument_group("TensorRT (as trtexec's options of the same purpose)")
    trt.add_argument("--workspace", metavar="SIZE", help="builder workspace memory pool, e.g. 2G or 512M")
    trt.add_argument("--timing-cache", type=Path, metavar="FILE", help="read and update this timing cache")
    trt.add_argument(
        "--opt-level",
        type=int,
        choices=range(6),
        metavar="0..5",
        help="builder optimization level (default 3)",
    )
    trt.add_argument(
        "--hardware-compat",
        choices=("none", "ampere+", "same-cc"),
        default="none",
        help="none (default), ampere+ (any Ampere-or-newer desktop GPU, not Jetson) or same-cc",
    )
    trt.add_argument(
        "--version-compatible", action="store_true", help="runs on later TensorRT versions of the same major"
    )
    trt.add_argument(
        "--refit", action="store_true", help="allow refitting fine-tuned weights without a rebuild"
    )


def tensorrt_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions.from_args(
        workspace=args.workspace,
        timing_cache=args.timing_cache,
        opt_level=args.opt_level,
        hardware_compat=args.hardware_compat,
        version_compatible=args.version_compatible,
        refit=args.refit,
    )


def run(args: argparse.Namespace) -> int:
    calibration = CalibrationOptions(
        num_images=args.num_images,
        seed=args.seed,
        val=args.val,
        held_out=args.held_out,
        max_map_drop=args.max_map_drop,
        force=args.force,
        recursive=args.recursive,
    )
    if args.calib is not None and args.precision != "int8":
        raise InvalidOption(f"--calib calibrates for --precision int8, not {args.precision}")
    if args.model.is_file() and is_checkpoint(args.model):
        require_export()  # before the backend is chosen and said: the one line is the error
    backend, reason = choose_backend(args.backend)
    if args.backend == "auto":
        note(f"--backend auto chose {backend}: {reason}")
    # TensorRT draws its own progress bar (rich allows one live display at a time).
    tensorrt = backend == "tensorrt"
    status = (
        contextlib.nullcontext()
        if tensorrt
        else err_console.status(f"building an engine from {shown(args.model)} ...")
    )
    with status:
        manifest = build_engine(
            args.model,
            args.output,
            backend=backend,
            precision=check_precision(args.precision),
            name=args.name,
            threads=args.threads,
            export=checkpoint_options(args),
            calib=args.calib,
            calibration=calibration,
            tensorrt=tensorrt_options(args),
            log=note,
            progress=tensorrt,
        )
    console.print(
        f"engine [bold]{shown(manifest.name)}[/]: {manifest.backend} {manifest.backend_version}, "
        f"{manifest.precision}, input {'x'.join(map(str, manifest.input_shape))} -> "
        f"{shown(manifest.engine_path)}",
        highlight=False,
    )
    return 0
