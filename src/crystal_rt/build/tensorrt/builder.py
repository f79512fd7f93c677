"""The builder core shared by TensorRT and TensorRT for RTX: every function takes the module.

``trt`` is the ``tensorrt`` or ``tensorrt_rtx`` module; both share these calls (Builder, network
flags, OnnxParser, IBuilderConfig, memory pools, timing cache, IProgressMonitor, hardware
compatibility, builder flags). Capabilities are detected with ``hasattr``, never version strings.
The TensorRT-RTX path runs here (no GPU) and is exercised by ``tests/trt_engines/test_rtx_builder.py``;
the ``tensorrt`` path needs a GPU and is unverified here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ...cuda.driver import check, ensure_context
from ...cuda.driver import driver as cuda_driver
from ...errors import BackendUnavailable, BuildError, CrystalRtError, CudaError, InvalidModel
from ...runtime.tensorrt.plugins import init_plugins, load_plugin_libraries
from ...runtime.tensorrt.trtlog import create, get_logger, out_of_memory, summarize
from .options import HARDWARE_COMPAT_LEVELS, BuildOptions
from .precision import PrecisionRoute, pin_box_layers
from .progress import make_monitor


@dataclass(frozen=True)
class ParserFailure:
    """One error of TensorRT's ONNX parser, with the node it is about."""

    node_index: int
    node_name: str
    op_type: str
    code: str
    description: str

    def __str__(self) -> str:
        return f"node {self.node_index} {self.node_name!r} ({self.op_type}): {self.code}: {self.description}"


class OnnxImportError(InvalidModel):
    """TensorRT's ONNX parser could not import the graph; ``failures`` lists every error."""

    def __init__(self, failures: list[ParserFailure], path: str | os.PathLike[str]) -> None:
        self.failures = failures
        first = failures[0] if failures else None
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        what = str(first)[:400] if first else "unknown error"
        super().__init__(f"TensorRT's ONNX parser cannot import {what}{more}", path=path)


class BuildCancelled(CrystalRtError):
    """The build was cancelled (Ctrl-C)."""


@dataclass
class BuildResult:
    plan: bytes
    seconds: float
    warnings: list[str] = field(default_factory=list)
    #: plugin libraries serialized into a version-compatible plan (``config.plugins_to_serialize``)
    plugin_libraries: list[str] = field(default_factory=list)


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    """``create_network`` flags: STRONGLY_TYPED where asked for and where the flag exists (10.x)."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _error_field(error: Any, name: str, default: Any) -> Any:
    getter = getattr(error, name, None)
    return getter() if callable(getter) else default


def parser_failures(parser: Any) -> list[ParserFailure]:
    """Every error the parser recorded, with node index, name and operator where the API has them."""
    failures = []
    for i in range(int(parser.num_errors)):
        error = parser.get_error(i)
        code = _error_field(error, "code", "")
        failures.append(
            ParserFailure(
                node_index=int(_error_field(error, "node", -1)),
                node_name=str(_error_field(error, "node_name", "")),
                op_type=str(_error_field(error, "node_operator", "")),
                code=str(getattr(code, "name", code)),
                description=str(_error_field(error, "desc", str(error))).strip(),
            )
        )
    return failures


def parse_onnx(
    trt: ModuleType, builder: Any, path: Path, strongly_typed: bool, say: Callable[[str], None] | None = None
) -> tuple[Any, Any]:
    """(network, parser) for the ONNX file; every parser error is reported, then OnnxImportError."""
    logger = get_logger(trt)
    init_plugins(trt, logger)
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        failures = parser_failures(parser)
        for failure in failures:
            (say or (lambda _m: None))(f"parser error: {failure}")
        raise OnnxImportError(failures, path)
    return network, parser


def configure(
    trt: ModuleType,
    config: Any,
    options: BuildOptions,
    route: PrecisionRoute,
    *,
    target_cc: str | None = None,
) -> Any:
    """Apply the options and the route's flags to ``config``; returns the timing cache object (or None)."""
    if options.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
    if options.opt_level is not None:
        _need(config, "builder_optimization_level", "--opt-level")
        config.builder_optimization_level = options.opt_level
    if options.hardware_compat != "none":
        level_name = HARDWARE_COMPAT_LEVELS[options.hardware_compat]
        levels = getattr(trt, "HardwareCompatibilityLevel", None)
        if levels is None or not hasattr(levels, level_name):
            raise BackendUnavailable(f"this TensorRT has no --hardware-compat {options.hardware_compat}")
        config.hardware_compatibility_level = getattr(levels, level_name)
    wanted = list(route.builder_flags)
    if options.version_compatible:
        wanted.append("VERSION_COMPATIBLE")
    if options.refit:
        wanted.append("REFIT")
    for flag in wanted:
        if not hasattr(trt.BuilderFlag, flag):
            raise BackendUnavailable(f"this TensorRT has no builder flag {flag}")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in route.cleared_flags:
        if hasattr(trt.BuilderFlag, flag):  # TensorRT-RTX has no TF32 flag: nothing to clear
            config.clear_flag(getattr(trt.BuilderFlag, flag))
    if target_cc is not None:
        set_compute_capability(trt, config, target_cc)
    return load_timing_cache(config, options.timing_cache)


def serialize_vc_plugins(config: Any, parser: Any, builder: Any = None) -> list[str]:
    """Put the plugin libraries the graph uses into a version-compatible plan and load them into the
    builder's plugin registry, as trtexec does (``modelToBuildEnv``, TensorRT 10.3): such a plan runs
    on TensorRT's lean runtime, which does not see the process's plugin registry (the RoiAlign of
    every Mask R-CNN is the ``ROIAlign_TRT`` plugin). Returns the libraries."""
    used = getattr(parser, "get_used_vc_plugin_libraries", None)
    libraries = [str(lib) for lib in used()] if callable(used) else []
    if libraries:
        if not hasattr(config, "plugins_to_serialize"):
            raise BackendUnavailable(
                "this graph needs plugins that a --version-compatible plan must carry, and this TensorRT "
                "cannot serialize plugins into a plan; build without --version-compatible"
            )
        config.plugins_to_serialize = libraries
        if builder is not None:
            load_plugin_libraries(builder, libraries)
    return libraries


def _need(config: Any, attr: str, option: str) -> None:
    if not hasattr(config, attr):
        raise BackendUnavailable(f"this TensorRT does not support {option}")


def compute_capability_names(trt: ModuleType) -> list[str]:
    """The ``trt.ComputeCapability`` members (TensorRT-RTX ahead-of-time targets), e.g. ``["SM75", ...]``."""
    enum = getattr(trt, "ComputeCapability", None)
    if enum is None:
        return []
    members = getattr(enum, "__members__", None)
    names = list(members) if members else [n for n in dir(enum) if n.startswith("SM")]
    return [n for n in names if n.startswith("SM")]


def set_compute_capability(trt: ModuleType, config: Any, cc: str) -> None:
    """Build ahead of time for one compute capability (``"8.9"`` or ``"SM89"``; TensorRT-RTX only)."""
    name = cc if cc.upper().startswith("SM") else "SM" + cc.replace(".", "")
    name = name.upper()
    if not hasattr(config, "set_compute_capability") or name not in compute_capability_names(trt):
        have = ", ".join(compute_capability_names(trt)) or "none (it builds for the GPU it runs on)"
        raise BackendUnavailable(f"this TensorRT cannot build ahead of time for {name}; it offers: {have}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, name), 0)


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """Create the config's timing cache from ``path`` (empty where the file does not exist yet)."""
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None or not hasattr(config, "get_timing_cache"):
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(memoryview(cache.serialize())))
    tmp.replace(path)


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    route: PrecisionRoute,
    options: BuildOptions,
    *,
    target_cc: str | None = None,
    say: Callable[[str], None] | None = None,
    progress: bool = False,
) -> BuildResult:
    """Parse ``onnx_path`` and build a serialized plan (bytes) with ``trt``.

    ``target_cc`` builds ahead of time for that compute capability (TensorRT-RTX). ``progress``
    shows a rich progress bar where ``trt.IProgressMonitor`` exists. Ctrl-C cancels the build
    (BuildCancelled); a build TensorRT refuses raises CrystalRtError quoting its log."""
    logger = get_logger(trt)
    mark = logger.mark()
    builder = create(trt.Builder, logger, "builder")
    network, parser = parse_onnx(trt, builder, onnx_path, route.strongly_typed, say)
    pinned = pin_box_layers(trt, network) if route.pin_fp32 else []
    if route.pin_fp32 and say is not None:
        say(f"FP16 for the convolutional layers; {len(pinned)} box, NMS and RoiAlign layers pinned to FP32")
    config = builder.create_builder_config()
    configure(trt, config, options, route, target_cc=target_cc)
    plugin_libraries = serialize_vc_plugins(config, parser, builder) if options.version_compatible else []

    monitor = make_monitor(trt, show=progress)  # also without a bar: Ctrl-C cancels through it
    if monitor is not None:
        config.progress_monitor = monitor
    start = time.perf_counter()
    workers: list[int] = []  # the build thread's ident: what TensorRT logs there is this build's
    try:
        serialized = _build_interruptibly(builder, network, config, monitor, workers)
    finally:
        if monitor is not None:
            monitor.close()
    seconds = time.perf_counter() - start
    if monitor is not None and monitor.cancelled:
        raise BuildCancelled("the TensorRT build was cancelled", path=onnx_path)
    if serialized is None:
        said = logger.since(mark, workers)
        if out_of_memory(said):
            raise CudaError(
                f"TensorRT ran out of GPU memory building this graph ({summarize(said)}){_free_memory()}; "
                "set a smaller --workspace, or close other GPU programs",
                code="CUDA_ERROR_OUT_OF_MEMORY",
                path=onnx_path,
            )
        raise BuildError(f"TensorRT could not build this graph: {summarize(said)}", path=onnx_path)
    save_timing_cache(config, options.timing_cache)
    plan = bytes(memoryview(serialized))
    if not plan:
        raise BuildError("TensorRT built an empty plan", path=onnx_path)
    warnings = [ln for ln in logger.since(mark, workers) if ln.startswith("[WARNING]")]
    return BuildResult(plan, seconds, warnings, plugin_libraries)


def _free_memory() -> str:
    """'; X MiB of Y MiB of GPU memory free' where the driver says, else ''."""

    try:
        ensure_context()
        free, total = check(cuda_driver().cuMemGetInfo(), "cuMemGetInfo")
    except CrystalRtError:
        return ""
    return f"; {int(free) / 2**20:.0f} MiB of {int(total) / 2**20:.0f} MiB of GPU memory are free"


def _build_interruptibly(builder: Any, network: Any, config: Any, monitor: Any, workers: list[int]) -> Any:
    """``build_serialized_network`` in a worker thread, so that Ctrl-C reaches Python and cancels it
    (the monitor's ``step_complete`` then returns False); without a monitor (no IProgressMonitor in this
    TensorRT) Ctrl-C is re-raised at once and the daemon build thread dies with the process."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["plan"] = builder.build_serialized_network(network, config)
        except BaseException as exc:  # re-raised in the calling thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="tensorrt-build", daemon=True)
    thread.start()
    workers.append(thread.ident or 0)
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            if monitor is None:
                raise
            monitor.cancel()
    if "error" in result:
        raise result["error"]
    return result.get("plan")
