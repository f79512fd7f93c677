"""A stand-in for the ``tensorrt`` module whose engines run on ONNX Runtime: the simulated GPU's TensorRT.

Test support (see :func:`crystal_rt.testing.simulated_gpu`). It covers the engine stage only, with
the API calls crystal-rt makes and the rules of TensorRT 10's Python API that matter to a caller:

* ``Builder`` / ``OnnxParser`` / ``IBuilderConfig`` / ``build_serialized_network``: the parser reads
  the ONNX file, records the plugins its ops need (RoiAlign -> ``ROIAlign_TRT``, as onnx-tensorrt
  maps it) and the I/O tensors; the "plan" is a small header (format, version, compute capability,
  builder flags, tensors, plugins) followed by the ONNX bytes. Builder flags start as TensorRT's
  do (``TF32`` set). ``build_serialized_network`` returns None (and logs why) where a real builder
  fails for the same reason we can see (an op the parser cannot import, a missing plugin).
* ``Runtime.deserialize_cuda_engine`` returns None and logs TensorRT's own messages when the plan
  needs ``ROIAlign_TRT`` and ``init_libnvinfer_plugins`` was not called in this process (the
  plugins of a version-compatible plan built with ``plugins_to_serialize`` load only with
  ``engine_host_code_allowed``), or when the plan is from another TensorRT version or compute
  capability.
* ``ICudaEngine`` reports the names, shapes, dtypes and modes of its I/O tensors;
  ``IExecutionContext.set_tensor_address`` must be given an address for every I/O tensor before
  ``execute_async_v3(stream)``, which returns a bool and queues the inference on the simulated
  stream: it reads the input from simulated device memory, runs ONNX Runtime (CPU), and writes the
  outputs (in the engine's dtypes) to the output addresses. A tensor address not 256-byte aligned is
  refused (``setTensorAddress`` returns False), as TensorRT documents.
* Runtimes, engines and execution contexts belong to the CUDA context current when they were made
  (the primary one where none was, as the CUDA runtime picks it): used under another context
  (``cuCtxCreate``), or after that primary context was destroyed (released to 0 and made again),
  they log an error and fail. ``live_objects()`` counts those not yet released.

What it cannot prove: TensorRT's numerics (FP16/INT8 kernels, TF32, tactic choices: the graph runs
in ONNX Runtime's FP32 or Q/DQ arithmetic), its plugins' own code, timing, memory use.
"""

from __future__ import annotations

import enum
import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .._lazy import require

if TYPE_CHECKING:
    from .sim_driver import SimulatedDriver

PLAN_MAGIC = b"CRTSIMPLAN1\n"
#: IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
ADDRESS_ALIGNMENT = 256
#: ONNX op -> the TensorRT plugin onnx-tensorrt maps it to
OP_PLUGINS = {"RoiAlign": "ROIAlign_TRT"}
#: ops TensorRT 10's ONNX parser cannot import
UNSUPPORTED_OPS = {"Unique", "SequenceAt", "SequenceConstruct", "SequenceInsert", "MaxRoiPool", "Compress"}


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:  # overridden by subclasses
        pass


class Logger(ILogger):
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_FROM_ORT = {
    "tensor(float)": DataType.FLOAT,
    "tensor(float16)": DataType.HALF,
    "tensor(int64)": DataType.INT64,
    "tensor(int32)": DataType.INT32,
    "tensor(uint8)": DataType.UINT8,
    "tensor(int8)": DataType.INT8,
    "tensor(bool)": DataType.BOOL,
}


def nptype(dtype: DataType) -> type:
    if dtype not in _NP:
        raise TypeError(f"Could not resolve TensorRT datatype {dtype!r} to an equivalent numpy datatype.")
    return _NP[dtype]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11
    REJECT_EMPTY_ALGORITHMS = 12
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14
    FP8 = 15
    BF16 = 17


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class IProgressMonitor:
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        pass

    def step_complete(self, phase_name: str, step: int) -> bool:
        return True

    def phase_finish(self, phase_name: str) -> None:
        pass


class IHostMemory(bytearray):
    @property
    def nbytes(self) -> int:
        return len(self)


@dataclass(frozen=True)
class _Tensor:
    name: str
    mode: str  # "INPUT" / "OUTPUT"
    shape: tuple[int, ...]
    dtype: str  # DataType member name


class SimulatedTensorRT:
    """Builds the module object; one per simulated GPU (it shares the simulated driver's memory)."""

    def __init__(self, driver: SimulatedDriver, version: str) -> None:
        self.driver = driver
        self.version = version
        self.plugins: set[str] = set()
        self.lock = threading.Lock()
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()  # runtimes, engines, execution contexts
        self.registries: list[tuple[str, _PluginRegistry]] = []  # every builder's and runtime's

    def loaded_libraries(self, owner: str) -> list[str]:
        """Plugin libraries loaded into the registries of every ``"builder"`` or ``"runtime"``."""
        return [lib for kind, registry in self.registries if kind == owner for lib in registry.libraries]

    def live_objects(self) -> dict[str, int]:
        """How many runtimes, engines and execution contexts are alive (not yet released)."""
        counts: dict[str, int] = {}
        for obj in list(self.live):
            kind = type(obj).__name__.strip("_").lower()
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def in_its_context(self, obj: Any, what: str, logger: Any) -> bool:
        """TensorRT objects belong to the CUDA context current when they were made (the primary one
        where none was): using one under another context, or after the primary context it was made
        in was destroyed (released to 0; a new one since), is refused."""
        here = self.driver.context_identity()
        if here == obj.context:
            return True
        where = (
            "the CUDA context it was created in is gone"
            if here[0] == obj.context[0]
            else "another CUDA context is current than the one it was created in"
        )
        self.log(logger, Severity.ERROR, f"{what}: {where} (a TensorRT object is bound to its CUDA context)")
        return False

    def module(self) -> ModuleType:
        mod = ModuleType("tensorrt")
        mod.__file__ = "<crystal-rt simulated TensorRT>"
        mod.__version__ = self.version  # type: ignore[attr-defined]
        mod.__simulated__ = True  # type: ignore[attr-defined]
        mod.simulation = self  # type: ignore[attr-defined]  # for SimulatedGpu.tensorrt_objects()
        for obj in (
            ILogger,
            Logger,
            DataType,
            TensorIOMode,
            NetworkDefinitionCreationFlag,
            BuilderFlag,
            MemoryPoolType,
            HardwareCompatibilityLevel,
            ExecutionContextAllocationStrategy,
            IProgressMonitor,
            IHostMemory,
        ):
            setattr(mod, obj.__name__, obj)
        mod.nptype = nptype  # type: ignore[attr-defined]
        mod.float32, mod.float16, mod.int64, mod.int32 = (  # type: ignore[attr-defined]
            DataType.FLOAT,
            DataType.HALF,
            DataType.INT64,
            DataType.INT32,
        )
        sim = self

        def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
            with sim.lock:
                sim.plugins.update(OP_PLUGINS.values())
            return True

        mod.init_libnvinfer_plugins = init_libnvinfer_plugins  # type: ignore[attr-defined]
        mod.Builder = lambda logger: _Builder(sim, logger)  # type: ignore[attr-defined]
        mod.OnnxParser = lambda network, logger: _OnnxParser(sim, network, logger)  # type: ignore[attr-defined]
        mod.Runtime = lambda logger: _Runtime(sim, logger)  # type: ignore[attr-defined]
        return mod

    def log(self, logger: Any, severity: Severity, message: str) -> None:
        if logger is not None and hasattr(logger, "log"):
            logger.log(severity, message)


# ---- building --------------------------------------------------------------------------------------


class _PluginRegistry:
    """``IPluginRegistry``: what ``load_library`` loaded (the simulated libraries always load)."""

    def __init__(self) -> None:
        self.libraries: list[str] = []

    def load_library(self, path: str) -> object:
        self.libraries.append(str(path))
        return object()  # the handle TensorRT returns


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.onnx: bytes | None = None
        self.source: str | None = None
        self.tensors: list[_Tensor] = []
        self.plugins: list[str] = []
        self._layers: list[_Layer] | None = None

    @property
    def layers(self) -> list[_Layer]:
        """The graph's nodes as layers, made on first use (ONNX shape inference takes about a second
        on the demo model; only a caller that looks at layers, or a weak FP16 build, pays for it)."""
        if self._layers is None:
            self._layers = _layers(self.onnx) if self.onnx is not None else []
        return self._layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> _Layer:
        return self.layers[index]

    @property
    def num_inputs(self) -> int:
        return sum(t.mode == "INPUT" for t in self.tensors)

    @property
    def num_outputs(self) -> int:
        return sum(t.mode == "OUTPUT" for t in self.tensors)


class _LayerTensor:
    def __init__(self, name: str, dtype: DataType) -> None:
        self.name, self.dtype = name, dtype


class _Layer:
    """One ONNX node as a layer (named after it, as onnx-tensorrt names them): its tensors' types, the
    precision and output types a caller pinned (None: TensorRT chooses)."""

    def __init__(self, name: str, op: str, inputs: list[_LayerTensor], outputs: list[_LayerTensor]) -> None:
        self.name, self.op = name, op
        self._inputs, self._outputs = inputs, outputs
        self.precision: DataType | None = None
        self.output_types: dict[int, DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> _LayerTensor:
        return self._inputs[index]

    def get_output(self, index: int) -> _LayerTensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.output_types[index] = DataType(dtype)


#: ONNX elem_type -> TensorRT DataType (what the core graph holds)
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 7: DataType.INT64, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 3: DataType.INT8}  # fmt: skip
#: the ONNX scopes of the core graph's convolutional parts; a layer elsewhere that computes in floating
#: point is box arithmetic, anchors, TopK/NMS or RoiAlign, which a weakly typed FP16 build must pin
_CONV_SCOPES = ("/backbone/", "/rpn/head/", "/roi_heads/box_head/", "/roi_heads/box_predictor/",
                "/roi_heads/mask_head/", "/roi_heads/mask_predictor/")  # fmt: skip
_BOX_OPS = {"NonMaxSuppression", "TopK", "RoiAlign"}


def _layers(model: bytes) -> list[_Layer]:
    """The graph's nodes as layers, with their tensors' types from ONNX shape inference."""
    onnx = require("onnx", "The simulated TensorRT's layers", extra="export")
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type

    def tensor(name: str) -> _LayerTensor:
        return _LayerTensor(name, _FROM_ONNX.get(types.get(name, 1), DataType.FLOAT))

    return [
        _Layer(n.name, n.op_type, [tensor(i) for i in n.input if i], [tensor(o) for o in n.output])
        for n in graph.node
    ]


def _must_stay_fp32(layer: _Layer) -> bool:
    """Box, NMS or RoiAlign work: a layer outside the convolutional scopes that touches floats."""
    if layer.name.startswith(_CONV_SCOPES) or not layer.name.startswith(("/rpn/", "/roi_heads/")):
        return False
    floats = {DataType.FLOAT, DataType.HALF}
    touches = [layer.get_input(i).dtype for i in range(layer.num_inputs)]
    touches += [layer.get_output(i).dtype for i in range(layer.num_outputs)]
    return layer.op in _BOX_OPS or any(t in floats for t in touches)


def _left_free(layer: _Layer) -> bool:
    """Whether a weakly typed FP16 build may still run ``layer`` (or write its outputs) in FP16."""
    if layer.precision != DataType.FLOAT:
        return True
    floats = {DataType.FLOAT, DataType.HALF}
    return any(
        layer.get_output(i).dtype in floats and layer.output_types.get(i) != DataType.FLOAT
        for i in range(layer.num_outputs)
    )


class _ParserError:
    def __init__(self, node: int, name: str, op: str, desc: str) -> None:
        self._node, self._name, self._op, self._desc = node, name, op, desc

    def code(self) -> str:
        return "UNSUPPORTED_NODE"

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def __str__(self) -> str:
        return self._desc


class _OnnxParser:
    def __init__(self, sim: SimulatedTensorRT, network: _Network, logger: Any) -> None:
        self.sim, self.network, self.logger = sim, network, logger
        self.errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]

    def clear_errors(self) -> None:
        self.errors = []

    def parse_from_file(self, path: str) -> bool:
        return self.parse(Path(path).read_bytes(), path)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        from ..runtime.backends.onnxruntime import create_session, session_options

        ops = _node_ops(model)
        with self.sim.lock:
            registered = set(self.sim.plugins)
        for index, (name, op) in enumerate(ops):
            if op in UNSUPPORTED_OPS:
                self.errors.append(
                    _ParserError(
                        index,
                        name,
                        op,
                        f"No importer registered for op: {op}. Attempting to import as plugin.",
                    )
                )
            elif op in OP_PLUGINS and OP_PLUGINS[op] not in registered:
                self.errors.append(
                    _ParserError(
                        index,
                        name,
                        op,
                        f"Plugin not found, are the plugin name, version, and namespace "
                        f"correct? ({OP_PLUGINS[op]} version 2; call init_libnvinfer_plugins first)",
                    )
                )
        if self.errors:
            return False
        tmp = Path(path) if path else None
        if tmp is None:
            raise ValueError("the simulated parser reads models from files (parse_from_file)")
        session = create_session(tmp, session_options(1, optimization="disable"))
        tensors = []
        for info, mode in [(i, "INPUT") for i in session.get_inputs()] + [
            (o, "OUTPUT") for o in session.get_outputs()
        ]:
            dtype = _FROM_ORT.get(info.type)
            if dtype is None or not all(isinstance(d, int) for d in info.shape):
                self.errors.append(
                    _ParserError(-1, info.name, "", f"tensor {info.name}: {info.type} {info.shape}")
                )
                continue
            tensors.append(_Tensor(info.name, mode, tuple(int(d) for d in info.shape), dtype.name))
        if self.errors:
            return False
        self.network.onnx, self.network.source, self.network.tensors = model, path, tensors
        self.network._layers = None  # parsed again on first use
        self.network.plugins = sorted({OP_PLUGINS[op] for _, op in ops if op in OP_PLUGINS})
        return True

    def get_used_vc_plugin_libraries(self) -> list[str]:
        return ["libnvinfer_vc_plugin.so"] if self.network.plugins else []


def _node_ops(model: bytes) -> list[tuple[str, str]]:
    """(node name, op type) of the graph's top-level nodes, read with onnx when installed."""
    try:
        import onnx
    except ImportError:
        return [("", op) for op in list(OP_PLUGINS) + sorted(UNSUPPORTED_OPS) if op.encode() in model]
    graph = onnx.load_from_string(model).graph
    return [(n.name, n.op_type) for n in graph.node]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data) or b"CRTSIMTIMING"

    def serialize(self) -> IHostMemory:
        return IHostMemory(self.data)

    def combine(self, other: _TimingCache, ignore_mismatch: bool) -> bool:
        return True


class _BuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = {BuilderFlag.TF32}  # TensorRT's default
        self.pools: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.progress_monitor: Any = None
        self.plugins_to_serialize: list[str] = []
        self._timing: _TimingCache | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[MemoryPoolType(pool)] = int(size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(MemoryPoolType(pool), 1 << 40)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self._timing = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._timing


class _Builder:
    def __init__(self, sim: SimulatedTensorRT, logger: Any) -> None:
        self.sim, self.logger = sim, logger
        self.platform_has_fast_fp16 = True
        self.registry = _PluginRegistry()
        sim.registries.append(("builder", self.registry))

    def get_plugin_registry(self) -> _PluginRegistry:
        return self.registry

    def create_network(self, flags: int = 0) -> _Network:
        return _Network(int(flags))

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig()

    def _fp32_kept(self, network: _Network, config: _BuilderConfig) -> bool:
        """The BuilderFlag.FP16 rule: a weakly typed build may run any layer in FP16 unless its precision
        and output types are pinned to FP32 and OBEY_PRECISION_CONSTRAINTS is set. A box, NMS or
        RoiAlign layer left free fails the build here (crystal-rt's contract keeps them FP32)."""
        free = [layer for layer in network.layers if _must_stay_fp32(layer) and _left_free(layer)]
        if not free and BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags:
            return True
        what = (
            f"{len(free)} box, NMS or RoiAlign layers may run in FP16 (first: {free[0].name}, {free[0].op})"
            if free
            else "layer precisions are pinned but OBEY_PRECISION_CONSTRAINTS is not set"
        )
        self.sim.log(self.logger, Severity.ERROR, f"crystal-rt simulated builder: {what}; pin them to FP32")
        return False

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> IHostMemory | None:
        if network.onnx is None:
            self.sim.log(
                self.logger, Severity.ERROR, "[network.cpp::validate] Error Code 4: the network has no inputs"
            )
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 1)
            keep_going = monitor.step_complete("Building engine", 0)
            monitor.phase_finish("Building engine")
            if not keep_going:
                self.sim.log(self.logger, Severity.ERROR, "the build was cancelled by the progress monitor")
                return None
        major, minor = self.sim.driver.compute_capability
        strongly = bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        if BuilderFlag.FP16 in config.flags and not strongly and not self._fp32_kept(network, config):
            return None
        header = {
            "format": 1,
            "version": self.sim.version,
            "compute_capability": f"{major}.{minor}",
            "flags": sorted(f.name for f in config.flags),
            "strongly_typed": strongly,
            "hardware_compatibility_level": HardwareCompatibilityLevel(
                config.hardware_compatibility_level
            ).name,
            "plugins": network.plugins,
            "plugins_serialized": list(config.plugins_to_serialize),
            "tensors": [t.__dict__ for t in network.tensors],
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
        }
        pinned = network._layers or []  # no layer looked at: none pinned
        header["fp32_pinned"] = sum(layer.precision == DataType.FLOAT for layer in pinned)
        if config._timing is not None:
            config._timing.data = b"CRTSIMTIMING:" + self.sim.version.encode()
        return IHostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx)


# ---- running ---------------------------------------------------------------------------------------


def read_plan(plan: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header, ONNX bytes) of a simulated plan; None for anything else."""
    if not plan.startswith(PLAN_MAGIC):
        return None
    rest = plan[len(PLAN_MAGIC) :]
    line, _, onnx_bytes = rest.partition(b"\n")
    try:
        return json.loads(line), onnx_bytes
    except ValueError:
        return None


#: what TensorRT 10 logs when deserialize_cuda_engine returns None (its own wording)
_DESERIALIZE_ERRORS = {
    "not_a_plan": "1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::47] Error Code 1: Serialization "
    "(Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed.Version tag does not match. "
    "Note: Current Version: 239, Serialized Engine Version: 0)",
    "version": "1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (Serialization "
    "assertion: The engine plan file is not compatible with this version of TensorRT, expecting library "
    "version {here} got {built}, please rebuild.)",
    "device": "1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (The engine plan file "
    "is generated on an incompatible device, expecting compute {here} got compute {built}, please rebuild.)",
    "plugin": "1: [pluginV2Runner.cpp::load::303] Error Code 1: Serialization (Serialization assertion "
    "creator failed.Cannot deserialize plugin since corresponding IPluginCreator not found in Plugin "
    "Registry) [{plugin}]",
    "host_code": "1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (a version-compatible "
    "plan runs host code: set engine_host_code_allowed = True)",
}
_DESERIALIZE_FAILED = (
    "4: [runtime.cpp::deserializeCudaEngine::66] Error Code 4: Internal Error "
    "(Engine deserialization failed.)"
)
_NO_DEVICE_MEMORY = (
    "3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error (a USER_MANAGED context needs "
    "setDeviceMemory before enqueue)"
)
_ADDRESS_NOT_SET = (
    "3: [executionContext.cpp::enqueueV3::2666] Error Code 3: API Usage Error (Parameter check failed, "
    "condition: ... Address is not set for {mode} tensor {name}. Call setInputTensorAddress or "
    "setTensorAddress before enqueue/execute.)"
)


def _runs_version_compatible(built: str, here: str) -> bool:
    """TensorRT's published rule: a later runtime of the same major, or 10 -> 11 and 8 -> 10."""

    def parts(text: str) -> tuple[int, ...]:
        return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in text.split(".")[:3])

    b, h = parts(built), parts(here)
    return h >= b and (b[0] == h[0] or (b[0], h[0]) in {(10, 11), (8, 10)})


class _Runtime:
    def __init__(self, sim: SimulatedTensorRT, logger: Any) -> None:
        self.sim, self.logger = sim, logger
        self.engine_host_code_allowed = False
        self.context = sim.driver.context_identity()
        sim.live.add(self)
        self.registry = _PluginRegistry()
        sim.registries.append(("runtime", self.registry))

    def get_plugin_registry(self) -> _PluginRegistry:
        return self.registry

    def _fail(self, kind: str, **fields: str) -> _Engine | None:
        """Log TensorRT's messages for a plan it refuses; returns None, as deserialize does."""
        self.sim.log(self.logger, Severity.ERROR, _DESERIALIZE_ERRORS[kind].format(**fields))
        self.sim.log(self.logger, Severity.ERROR, _DESERIALIZE_FAILED)
        return None

    def deserialize_cuda_engine(self, plan: Any) -> _Engine | None:
        if not self.sim.in_its_context(self, "deserializeCudaEngine", self.logger):
            return None
        return self._deserialize(bytes(plan))

    def _deserialize(self, plan: bytes) -> _Engine | None:
        parsed = read_plan(plan)
        if parsed is None:
            return self._fail("not_a_plan")
        header, onnx_bytes = parsed
        vc = "VERSION_COMPATIBLE" in header["flags"]
        if header["version"] != self.sim.version and not (
            vc and _runs_version_compatible(header["version"], self.sim.version)
        ):
            return self._fail("version", here=self.sim.version, built=header["version"])
        major, minor = self.sim.driver.compute_capability
        here = f"{major}.{minor}"
        if header["compute_capability"] != here and header["hardware_compatibility_level"] == "NONE":
            return self._fail("device", here=here, built=header["compute_capability"])
        with self.sim.lock:
            registered = set(self.sim.plugins)
        if vc:  # the lean runtime sees only the plugins serialized into the plan
            registered = (
                set(header["plugins"])
                if header["plugins_serialized"] and self.engine_host_code_allowed
                else set()
            )
        for plugin in header["plugins"]:
            if plugin not in registered:
                return self._fail("plugin", plugin=plugin)
        if vc and not self.engine_host_code_allowed:
            return self._fail("host_code")
        return _Engine(self.sim, header, onnx_bytes, self.logger)


class _Engine:
    def __init__(
        self, sim: SimulatedTensorRT, header: dict[str, Any], onnx_bytes: bytes, logger: Any
    ) -> None:
        from ..runtime.backends.onnxruntime import session_options

        self.sim = sim
        self.logger = logger
        self.header = header
        self.tensors = [_Tensor(**t) for t in header["tensors"]]
        self._by_name = {t.name: t for t in self.tensors}
        ort = require("onnxruntime", "The simulated TensorRT")
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self.name = "crystal-rt simulated engine"
        self.device_memory_size = self.device_memory_size_v2 = 64 << 20  # activation memory asked for
        self.context = sim.driver.context_identity()
        sim.live.add(self)

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index].name

    def _tensor(self, name: str) -> _Tensor:
        if name not in self._by_name:
            raise RuntimeError(f"no tensor {name!r} in this engine")
        return self._by_name[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensor(name).dtype]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensor(name).mode]

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> _Context | None:
        if not self.sim.in_its_context(self, "createExecutionContext", self.logger):
            return None
        return _Context(self, ExecutionContextAllocationStrategy(strategy))

    def __del__(self) -> None:
        self.session = None


class _Context:
    def __init__(self, engine: _Engine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine = engine
        self.strategy = strategy
        self.addresses: dict[str, int] = {}
        self._device_memory = 0
        self.context = engine.context
        engine.sim.live.add(self)

    @property
    def device_memory(self) -> int:
        return self._device_memory

    @device_memory.setter
    def device_memory(self, ptr: int) -> None:
        self.set_device_memory(ptr, self.engine.device_memory_size_v2)

    def set_device_memory(self, ptr: int, size: int) -> None:
        """USER_MANAGED contexts: the activation memory (at least device_memory_size_v2 bytes)."""
        if (
            self.engine.sim.driver.device_view(int(ptr), int(size)) is None
            or size < self.engine.device_memory_size_v2
        ):
            self.engine.sim.log(
                self.engine.logger, Severity.ERROR, "setDeviceMemory: not enough device memory"
            )
            return
        self._device_memory = int(ptr)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._by_name:
            self.engine.sim.log(self.engine.logger, Severity.ERROR, f"setTensorAddress: no tensor {name}")
            return False
        if int(memory) % ADDRESS_ALIGNMENT:  # "The pointer must have at least 256-byte alignment."
            self.engine.sim.log(
                self.engine.logger,
                Severity.ERROR,
                f"setTensorAddress: the address of {name} ({int(memory):#x}) is not 256-byte aligned",
            )
            return False
        self.addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def set_input_shape(self, name: str, shape: Any) -> bool:
        return tuple(int(d) for d in shape) == self.engine.get_tensor_shape(name)

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine, sim = self.engine, self.engine.sim
        driver = sim.driver
        if not sim.in_its_context(self, "enqueueV3", engine.logger):
            return False
        if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and not self._device_memory:
            sim.log(engine.logger, Severity.ERROR, _NO_DEVICE_MEMORY)
            return False
        missing = [t.name for t in engine.tensors if not self.addresses.get(t.name)]
        if missing:
            mode = engine._by_name[missing[0]].mode.lower()
            sim.log(engine.logger, Severity.ERROR, _ADDRESS_NOT_SET.format(mode=mode, name=missing[0]))
            return False
        views: dict[str, np.ndarray] = {}
        for t in engine.tensors:
            dtype = np.dtype(nptype(DataType[t.dtype]))
            nbytes = int(np.prod(t.shape)) * dtype.itemsize
            raw = driver.device_view(self.addresses[t.name], nbytes)
            if raw is None:
                sim.log(
                    engine.logger,
                    Severity.ERROR,
                    f"the address of {t.name} is not {nbytes} bytes of device memory",
                )
                return False
            views[t.name] = raw.view(dtype).reshape(t.shape)
        inputs = [t.name for t in engine.tensors if t.mode == "INPUT"]
        outputs = [t.name for t in engine.tensors if t.mode == "OUTPUT"]

        def run() -> None:
            feed = {name: np.array(views[name]) for name in inputs}
            results = engine.session.run(outputs, feed)
            for name, value in zip(outputs, results, strict=True):
                views[name][...] = (
                    np.asarray(value).astype(views[name].dtype, copy=False).reshape(views[name].shape)
                )

        code = driver.enqueue_host_work(int(stream_handle), "TensorRT engine", run)
        return bool(code == driver.OK)
