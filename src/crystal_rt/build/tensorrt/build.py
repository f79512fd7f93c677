"""``build_tensorrt``: a core ONNX -> ``NAME.plan`` + ``NAME.manifest.json`` (nothing prepended to the plan).

On ``tensorrt`` it builds for this machine's GPU (needs one). With ``module="tensorrt_rtx"`` and
``target_cc`` it builds ahead of time without a GPU (TensorRT for RTX): those plans are for checking
what builds (tests, CI), not for ``crystal-rt detect``. Unverified here: the ``tensorrt`` path (no GPU).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ...calibration.metadata import read_calibration
from ...errors import BackendUnavailable, InvalidModel, InvalidOption
from ...runtime.artifacts import Manifest, sha256_file
from ...runtime.tensorrt import device
from ...runtime.tensorrt.modules import TENSORRT, TENSORRT_RTX, load_tensorrt, module_version
from ...spec import specs_from_metadata
from . import cache as engine_cache
from .builder import build_plan
from .options import BuildOptions
from .precision import route_precision

BACKEND_NAMES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt-rtx"}


def read_graph_info(source: Path) -> tuple[dict[str, str], list[int]]:
    """The ONNX metadata_props and the input shape, read with ONNX Runtime (part of the gpu extra)."""
    from ...runtime.backends.onnxruntime import create_session, session_options

    session = create_session(source, session_options(1, optimization="disable"))
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidModel(f"expected one input 'images', found {len(inputs)}", path=source)
    shape = [int(d) if isinstance(d, int) else -1 for d in inputs[0].shape]
    del session
    return metadata, shape


def build_tensorrt(
    source_onnx: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str,
    precision: str = "fp32",
    options: BuildOptions | None = None,
    *,
    module: str = TENSORRT,
    target_cc: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> Manifest:
    """Build ``NAME.plan`` for this GPU (or ``target_cc`` ahead of time on TensorRT-RTX), write its
    manifest and return it. An identical earlier build (same cache key) is copied from the cache."""
    say = log or (lambda _msg: None)
    opts = options or BuildOptions()
    source = Path(source_onnx)
    if not source.is_file():
        raise InvalidModel("model file not found", path=source)
    trt = load_tensorrt("Building a TensorRT engine", module)

    metadata, input_shape = read_graph_info(source)
    model_spec, pre = specs_from_metadata(metadata, source)
    calibration = read_calibration(metadata, source)
    route = route_precision(trt, precision, calibration, source)
    gpu_name, cc, cuda = _target(module, target_cc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / f"{name}.plan"
    if plan_path.resolve() == source.resolve():
        raise InvalidOption(f"the engine would overwrite its source; use another -o than {out}", path=source)
    version = module_version(trt)
    onnx_sha = sha256_file(source)
    key_fields = {
        "module": module,
        "version": version,
        "cuda": cuda,
        "gpu": gpu_name,
        "compute_capability": cc,
        "onnx_sha256": onnx_sha,
        "precision": precision,
        "route": route.to_dict(),
        "options": opts.cache_key_dict(),
    }
    key = engine_cache.cache_key(key_fields)
    hit = engine_cache.lookup(key) if use_cache else None
    start = time.perf_counter()
    plugin_libraries: list[str] = []
    if hit is not None:
        shutil.copyfile(hit[0], plan_path)
        build_seconds = float(hit[1].get("build_seconds", 0.0))
        plugin_libraries = list(hit[1].get("plugin_libraries", []))
        say(f"reused the cached engine {hit[0]} (identical build)")
    else:
        say(f"building {source.name} with {BACKEND_NAMES[module]} {version} ({precision}, {cc})")
        result = build_plan(trt, source, route, opts, target_cc=target_cc, say=say, progress=progress)
        tmp = plan_path.with_name(plan_path.name + ".tmp")
        tmp.write_bytes(result.plan)
        tmp.replace(plan_path)
        build_seconds = result.seconds
        plugin_libraries = result.plugin_libraries
        if use_cache:
            meta = {**key_fields, "build_seconds": build_seconds, "plugin_libraries": plugin_libraries}
            engine_cache.store(key, plan_path, meta)
    manifest = Manifest.for_engine(
        plan_path,
        source,
        name=name,
        backend=BACKEND_NAMES[module],
        backend_version=version,
        precision=precision,
        input_shape=input_shape,
        preprocess=pre,
        model=model_spec,
        source_sha256=onnx_sha,
        cuda_version=cuda,
        gpu_name=gpu_name,
        compute_capability=cc,
        build_options={
            **opts.to_dict(),
            "precision_route": route.to_dict(),
            "target": "ahead-of-time" if target_cc else "this GPU",
            "build_seconds": round(build_seconds, 3),
            "cache": "hit" if hit is not None else "miss",
            "cache_key": key,
            **({"serialized_plugins": plugin_libraries} if plugin_libraries else {}),
            **({"calibration": asdict(calibration)} if calibration else {}),
        },
    )
    manifest.write(out)
    say(f"wrote {plan_path} ({plan_path.stat().st_size} bytes) and {manifest.path} "
        f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return manifest


def _target(module: str, target_cc: str | None) -> tuple[str | None, str | None, str | None]:
    """(GPU name, compute capability, CUDA version) the plan is built for."""
    if target_cc is not None:
        cc = target_cc.upper().removeprefix("SM")
        cc = cc if "." in cc else f"{cc[:-1]}.{cc[-1]}"
        return None, cc, device.cuda_driver_version()
    info = device.gpu()
    if info is None:
        raise BackendUnavailable(
            "building a TensorRT engine needs an NVIDIA GPU and driver, and none was found here; "
            "build on the target machine, or use --backend onnxruntime"
        )
    return info.name, info.compute_capability, device.cuda_driver_version()
