"""``build_engine``: turn a core ONNX (or a checkpoint, exported first) into an engine on this machine.

ONNX Runtime engines are the graph optimised by ONNX Runtime for this CPU, saved as
``NAME.onnx`` beside ``NAME.manifest.json``. TensorRT plans come with the TensorRT runtime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from .._lazy import require
from ..calibration.metadata import read_calibration
from ..calibration.options import CalibrationOptions
from ..cuda.probe import probe
from ..errors import BackendUnavailable, InvalidModel, InvalidOption
from ..export.options import ExportOptions
from ..runtime.artifacts import Manifest
from ..runtime.backends.ort_providers import CUDA_EP, TRT_EP
from ..runtime.backends.ort_providers import probe as provider_loads
from ..runtime.tensorrt.modules import tensorrt_installed
from ..spec import specs_from_metadata
from .tensorrt.options import BuildOptions

if TYPE_CHECKING:
    from ..calibration.metadata import CalibrationInfo

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BuildOptions",
    "CalibrationOptions",
    "ExportOptions",
    "Precision",
    "build_engine",
    "check_backend",
    "check_precision",
    "choose_backend",
    "is_checkpoint",
    "require_export",
    "resolve_backend",
]

Backend = Literal["auto", "onnxruntime", "tensorrt", "onnxruntime-trt", "onnxruntime-cuda"]
Precision = Literal["fp32", "fp16", "int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def check_backend(value: str) -> Backend:
    """``value`` as a :data:`Backend`, or InvalidOption naming the choices."""
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise InvalidOption(f"unknown backend {value!r}; choose one of {', '.join(BACKENDS)}")


def check_precision(value: str) -> Precision:
    """``value`` as a :data:`Precision`, or InvalidOption naming the choices."""
    for precision in PRECISIONS:
        if value == precision:
            return precision
    raise InvalidOption(f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def is_checkpoint(path: Path) -> bool:
    """A PyTorch checkpoint (by suffix, or torch.save's zip container) rather than an ONNX file."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    if path.suffix.lower() == ".onnx":
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def require_export() -> None:
    """Building from a checkpoint exports it first: one sentence naming the extra where it is missing."""
    for module in ("torch", "torchvision", "onnx"):
        require(module, "Building an engine from a checkpoint (it is exported to ONNX first)", extra="export")


def build_engine(
    model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    backend: Backend = "auto",
    precision: Precision = "fp32",
    name: str | None = None,
    threads: int | None = None,
    export: ExportOptions | None = None,
    calib: str | os.PathLike[str] | None = None,
    calibration: CalibrationOptions | None = None,
    tensorrt: BuildOptions | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Manifest:
    """Build an engine for this machine and return its manifest (already written to ``output_dir``).

    ``model`` is a core ONNX (no torch needed) or a checkpoint, exported first (needs the export
    extra; ``export``: what the export may override, :class:`~crystal_rt.export.options.ExportOptions`).

    ``precision="int8"`` on ONNX Runtime needs a graph from ``crystal-rt calibrate`` (target
    onnxruntime), or ``calib``, a folder of images to calibrate on first (``calibration``: how,
    :class:`~crystal_rt.calibration.options.CalibrationOptions`).

    ``tensorrt`` (TensorRT only): workspace, timing cache, optimisation level, hardware and version
    compatibility, refit (:class:`~crystal_rt.build.tensorrt.options.BuildOptions`); ``progress``
    shows TensorRT's build progress bar.
    """
    say = log or (lambda _msg: None)
    src = Path(model)
    if not src.is_file():
        raise InvalidModel("model file not found", path=src)
    backend, precision = check_backend(backend), check_precision(precision)  # callers without mypy
    if backend == "auto":
        backend, reason = choose_backend(backend)
        say(f"--backend auto chose {backend}: {reason}")
    if backend == "tensorrt":
        from ..runtime.tensorrt.modules import load_tensorrt

        load_tensorrt("Building a TensorRT engine")  # fails first, in one sentence, without TensorRT
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or src.name.split(".")[0]

    with tempfile.TemporaryDirectory(prefix="crystal-rt-build-") as tmp:
        source = src
        if is_checkpoint(src):
            require_export()
            from ..export.api import export_checkpoint

            say(f"exporting {src} to the core ONNX")
            source = out / f"{stem}.core.onnx"
            export_checkpoint(src, source, **(export or ExportOptions()).kwargs())
        if precision == "int8" and calib is not None:
            from ..calibration.api import calibrate

            calibrated = out / f"{stem}.int8.onnx"
            target = "tensorrt" if backend == "tensorrt" else "onnxruntime"
            say(f"calibrating {source.name} for {target} INT8 on {calib}")
            result = calibrate(
                source, calib, calibrated, precision="int8", target=target, threads=threads,
                log=say, **(calibration or CalibrationOptions()).kwargs(),
            )  # fmt: skip
            acc = result.accuracy
            say(
                f"accuracy check against FP32 on {acc.reference}: mAP@0.50 {acc.fp32_map50:.4f} -> "
                f"{acc.map50:.4f} (drop {acc.map50_drop:+.4f}), {acc.matched} of {acc.fp32_detections} "
                f"FP32 detections matched{'' if result.accepted else '; kept with --force past the limit'}"
            )
            source = calibrated
        if backend == "tensorrt":
            from .tensorrt.build import build_tensorrt

            return build_tensorrt(source, out, stem, precision, tensorrt, log=say, progress=progress)
        if backend in ("onnxruntime-trt", "onnxruntime-cuda"):
            from .ort_gpu import build_ort_gpu

            return build_ort_gpu(source, out, stem, backend, precision, say)
        return _build_onnxruntime(source, out, stem, precision, threads, Path(tmp), say)


def choose_backend(backend: str) -> tuple[Backend, str]:
    """The backend to build for and why. ``auto``, in this order: TensorRT (installed, GPU usable),
    ONNX Runtime's TensorRT provider, its CUDA provider (where they really load), the CPU. A GPU that
    is present and unusable (driver trouble) is refused in one sentence rather than silently built
    for the CPU."""
    if backend != "auto":
        return check_backend(backend), "asked for"

    state = probe()
    if state.present and not state.usable:
        raise BackendUnavailable(
            f"an NVIDIA GPU is present but unusable: {state.message}; fix the driver, or build for the CPU "
            "with --backend onnxruntime"
        )
    if not state.usable:
        return "onnxruntime", f"no GPU ({state.message})"
    if tensorrt_installed():
        return "tensorrt", f"TensorRT is installed and the GPU is usable ({state.message})"
    trt_ok, trt_why = provider_loads(TRT_EP)
    if trt_ok:
        return "onnxruntime-trt", f"TensorRT is not installed, ONNX Runtime's {TRT_EP} loads"
    cuda_ok, cuda_why = provider_loads(CUDA_EP)
    if cuda_ok:
        return "onnxruntime-cuda", f"TensorRT is not installed; {trt_why}; ONNX Runtime's {CUDA_EP} loads"
    return "onnxruntime", f"a GPU is usable but TensorRT is not installed, and {cuda_why}"


def resolve_backend(backend: str) -> Backend:
    """The backend ``auto`` resolves to (see :func:`choose_backend`)."""
    return choose_backend(backend)[0]


def _build_onnxruntime(
    source: Path,
    out: Path,
    name: str,
    precision: str,
    threads: int | None,
    tmp: Path,
    say: Callable[[str], None],
) -> Manifest:
    ort = require("onnxruntime", "Building an ONNX Runtime engine", extra="cpu")
    from ..runtime.backends.onnxruntime import create_session, session_options

    if precision == "fp16":
        raise BackendUnavailable(
            "fp16 runs on GPUs only (TensorRT or ONNX Runtime's CUDA EP); use --precision fp32 on the CPU"
        )
    say(f"optimising {source.name} with ONNX Runtime {ort.__version__} for this CPU")
    staged = tmp / f"{name}.onnx"
    opts = session_options(threads, optimization="all")
    opts.optimized_model_filepath = str(staged)
    session = create_session(source, opts)
    metadata = session.get_modelmeta().custom_metadata_map
    calibration = _check_calibration(metadata, source, precision)
    model_spec, pre = specs_from_metadata(metadata, source)
    input_shape = [int(d) for d in session.get_inputs()[0].shape]
    del session
    if not staged.is_file():
        raise InvalidModel("ONNX Runtime wrote no optimised model", path=source)
    engine = out / f"{name}.onnx"
    if engine.resolve() == source.resolve():
        raise InvalidOption(
            f"the engine would overwrite its source; choose another -o than {out}", path=source
        )
    shutil.move(str(staged), engine)
    manifest = Manifest.for_engine(
        engine,
        source,
        name=name,
        backend="onnxruntime",
        backend_version=ort.__version__,
        precision=precision,
        input_shape=input_shape,
        preprocess=pre,
        model=model_spec,
        build_options={
            "graph_optimization_level": "all",
            "providers": ["CPUExecutionProvider"],
            **({"calibration": asdict(calibration)} if calibration else {}),
        },
    )
    manifest.write(out)
    say(f"wrote {engine} and {manifest.path}")
    return manifest


def _check_calibration(metadata: dict[str, str], source: Path, precision: str) -> CalibrationInfo | None:
    """The graph's calibration record, refusing a graph that is not for ONNX Runtime at ``precision``."""

    info = read_calibration(metadata, source)
    if precision == "int8":
        if info is None:
            raise BackendUnavailable(
                "INT8 needs a calibrated graph: pass --calib DIR (a folder of typical images) or build "
                "from the output of crystal-rt calibrate",
                path=source,
            )
        if info.precision != "int8" or info.target != "onnxruntime":
            raise BackendUnavailable(
                f"this is a {info.precision} graph made for {info.target} ({info.tool}); ONNX Runtime "
                "on the CPU needs its own INT8 graph: crystal-rt calibrate FP32.onnx --images DIR "
                "--target onnxruntime",
                path=source,
            )
    elif info is not None:
        raise BackendUnavailable(
            f"this graph is calibrated for {info.precision}; build it with --precision {info.precision}, "
            "or build FP32 from the uncalibrated core ONNX",
            path=source,
        )
    return info
