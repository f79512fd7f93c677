"""``build-engine --backend onnxruntime-cuda | onnxruntime-trt``: an ONNX Runtime GPU engine and its
manifest, and the check of that manifest against this machine before the engine is opened.

The engine is the core ONNX itself (``NAME.onnx``; ONNX Runtime optimises it for the GPU when it
loads it). The TensorRT provider builds its TensorRT engine into ``NAME.ort-trt-cache/`` beside it,
during ``build-engine`` (one warm-up inference), FP16 where asked. The manifest records the
provider, its options, ONNX Runtime's and the driver's CUDA versions, and the GPU; an engine from
another ONNX Runtime version or GPU is refused with the rebuild command, as for TensorRT plans.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration.metadata import read_calibration
from ..cuda.binding import onnxruntime_gpu
from ..errors import BackendUnavailable, InvalidOption
from ..runtime.artifacts import Manifest
from ..runtime.backends.ort_providers import PROVIDER_OF, TRT_EP, probe
from ..runtime.tensorrt import device
from ..spec import specs_from_metadata


def provider_options(backend: str, precision: str, name: str) -> dict[str, str]:
    """The provider options an engine is built and run with (paths relative to the engine folder)."""
    if PROVIDER_OF[backend] == TRT_EP:
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": f"{name}.ort-trt-cache",
            "trt_timing_cache_enable": "True",
            "trt_fp16_enable": "True" if precision == "fp16" else "False",
        }
    return {}


def _check_precision(backend: str, precision: str, calibration: Any, source: Path) -> None:
    if precision == "int8":
        raise BackendUnavailable(
            f"{backend} does not take INT8 graphs here: build INT8 with --backend tensorrt (a Q/DQ graph) or "
            "--backend onnxruntime (the CPU)",
            path=source,
        )
    if PROVIDER_OF[backend] == TRT_EP:
        if calibration is not None:
            raise BackendUnavailable(
                "onnxruntime-trt builds FP16 from the FP32 graph (trt_fp16_enable): give it the FP32 core "
                "ONNX",
                path=source,
            )
        return
    if precision == "fp16" and (calibration is None or calibration.precision != "fp16"):
        raise BackendUnavailable(
            "onnxruntime-cuda runs FP16 from an AutoCast FP16 graph: crystal-rt calibrate FP32.onnx "
            "--precision fp16 --target tensorrt (the calibrate-trt install), then build-engine that graph",
            path=source,
        )
    if precision == "fp32" and calibration is not None:
        raise BackendUnavailable(
            f"this graph is calibrated for {calibration.precision}; build it with --precision "
            f"{calibration.precision}, or FP32 from the uncalibrated core ONNX",
            path=source,
        )


def build_ort_gpu(
    source: Path, out: Path, name: str, backend: str, precision: str, say: Callable[[str], None]
) -> Manifest:
    from ..runtime.backends.ort_gpu import OrtGpuBackend

    provider = PROVIDER_OF[backend]
    ok, why = probe(provider)
    if not ok:
        raise BackendUnavailable(f"--backend {backend} needs {provider}, and {why}")
    gpu = device.gpu()
    if gpu is None:
        raise BackendUnavailable(
            f"--backend {backend} needs an NVIDIA GPU and driver, and none was found here"
        )
    ort = onnxruntime_gpu()
    metadata = core_metadata(source)
    model_spec, pre = specs_from_metadata(metadata, source)
    _check_precision(backend, precision, read_calibration(metadata, source), source)
    engine = out / f"{name}.onnx"
    if engine.resolve() == source.resolve():
        raise InvalidOption(
            f"the engine would overwrite its source; choose another -o than {out}", path=source
        )
    shutil.copyfile(source, engine)
    options = provider_options(backend, precision, name)
    start = time.perf_counter()
    say(f"loading {source.name} on {provider} ({ort.__version__}, {gpu.name})")
    engine_backend = OrtGpuBackend(engine, backend=backend, provider_options=options)
    try:
        input_shape = list(engine_backend.shapes["images"])
        # one inference: the TensorRT provider builds its engine (into the cache folder) here
        engine_backend.infer(np.zeros(tuple(input_shape), np.float32))
    finally:
        engine_backend.close()
    seconds = time.perf_counter() - start
    manifest = Manifest.for_engine(
        engine,
        source,
        name=name,
        backend=backend,
        backend_version=ort.__version__,
        precision=precision,
        input_shape=input_shape,
        preprocess=pre,
        model=model_spec,
        cuda_version=device.cuda_driver_version(),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        build_options={"provider": provider, "provider_options": options, "build_seconds": round(seconds, 3)},
    )
    manifest.write(out)
    say(f"wrote {engine} and {manifest.path} in {seconds:.1f} s")
    return manifest


def core_metadata(path: Path) -> dict[str, str]:
    """The core ONNX's metadata_props (read on the CPU, without building anything)."""
    from ..runtime.backends.onnxruntime import create_session, session_options

    cpu = create_session(path, session_options(1, optimization="disable"))
    return dict(cpu.get_modelmeta().custom_metadata_map)
