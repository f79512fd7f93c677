"""TensorRT code paths that need no GPU: missing TensorRT, manifest checks, options, precision routing.

TensorRT cannot run here (no GPU, no driver), so:

* the machine's TensorRT version and compute capability are monkeypatched
  (``crystal_rt.runtime.tensorrt.device.tensorrt_version`` / ``compute_capability``): nothing else
  about the engine check is faked, and the check runs before any TensorRT call;
* precision routing and builder configuration run against a FAKE ``trt`` module (a namespace with the
  enums and a recording config), because TensorRT's builder needs a GPU. The same functions drive a
  real builder in ``test_rtx_builder.py`` (TensorRT-RTX).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crystal_rt.assets import demo_model
from crystal_rt.build.engine import resolve_backend
from crystal_rt.build.tensorrt.builder import configure, network_flags
from crystal_rt.build.tensorrt.options import BuildOptions, parse_size
from crystal_rt.build.tensorrt.precision import PrecisionRoute, route_precision
from crystal_rt.calibration.metadata import CalibrationInfo
from crystal_rt.cli.main import build_parser, main
from crystal_rt.errors import BackendUnavailable, CrystalRtError, EngineIncompatible, EngineNotFound
from crystal_rt.runtime import detector as detector_module
from crystal_rt.runtime.artifacts import Manifest, sha256_file
from crystal_rt.runtime.detector import Detector
from crystal_rt.runtime.tensorrt import device
from crystal_rt.runtime.tensorrt.compat import cc_ok, version_ok
from crystal_rt.runtime.tensorrt.modules import tensorrt_installed
from crystal_rt.spec import ModelSpec, PreprocessSpec

# --- without TensorRT -------------------------------------------------------------------------


def test_build_engine_tensorrt_without_tensorrt_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    code = main(["build-engine", str(demo_model()), "--backend", "tensorrt", "-o", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "crystal-rt[gpu]" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_auto_picks_onnxruntime_without_tensorrt_or_gpu() -> None:
    if tensorrt_installed() and device.gpu_count():
        pytest.skip("TensorRT and a GPU are present")
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("tensorrt") == "tensorrt"


# --- manifests --------------------------------------------------------------------------------


def _plan_engine(folder: Path, **overrides: Any) -> Path:
    """A ``.plan`` (random bytes: never deserialized) with a TensorRT manifest; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "crystals.plan"
    plan.write_bytes(b"\x00not-a-real-plan" * 64)
    fields: dict[str, Any] = {
        "name": "crystals",
        "backend": "tensorrt",
        "backend_version": "10.3.0",
        "engine_file": plan.name,
        "engine_sha256": sha256_file(plan),
        "engine_bytes": plan.stat().st_size,
        "source_onnx": str(demo_model()),
        "source_onnx_sha256": "0" * 64,
        "precision": "fp16",
        "input_shape": [1, 3, 512, 512],
        "preprocess": PreprocessSpec(),
        "model": ModelSpec(arch="maskrcnn_resnet18_fpn", num_classes=2),
        "crystal_rt_version": "0.1.0",
        "build_time": "2026-11-25T00:00:00+00:00",
        "cuda_version": "12.6",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "build_options": {"hardware_compat": "none", "version_compatible": False},
    }
    fields.update(overrides)
    return Manifest(**fields).write(folder)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Pretend this machine has TensorRT 10.3.0 and a compute capability 8.7 GPU (Jetson Orin)."""
    here = {"version": "10.3.0", "cc": "8.7"}
    monkeypatch.setattr(device, "tensorrt_version", lambda module="tensorrt": here["version"])
    monkeypatch.setattr(device, "compute_capability", lambda index=0: here["cc"])
    return here


def test_other_tensorrt_version_is_refused(tmp_path: Path, machine: dict[str, str]) -> None:
    manifest = _plan_engine(tmp_path / "e")
    machine["version"] = "10.13.0"
    with pytest.raises(EngineIncompatible) as err:
        Detector.load(tmp_path / "e")
    text = str(err.value)
    assert "TensorRT 10.3.0" in text and "TensorRT 10.13.0" in text and str(manifest) in text
    assert "rebuild it here: crystal-rt build-engine" in text and len(text.splitlines()) == 1


def test_other_compute_capability_is_refused(tmp_path: Path, machine: dict[str, str]) -> None:
    _plan_engine(tmp_path / "e")
    machine["cc"] = "8.9"
    with pytest.raises(
        EngineIncompatible, match=r"compute capability 8\.7 \(Orin\).*this GPU has compute capability 8\.9"
    ):
        Detector.load(tmp_path / "e" / "crystals.plan")


def test_matching_manifest_reaches_tensorrt(
    tmp_path: Path, machine: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a matching machine the plan file is checked, then handed to TensorRTBackend (recorded here)."""
    _plan_engine(tmp_path / "e")
    opened: list[Path] = []

    class Recorder:
        def __init__(self, plan: Path, *, manifest: Manifest) -> None:
            opened.append(Path(plan))

    monkeypatch.setattr("crystal_rt.runtime.tensorrt.backend.TensorRTBackend", Recorder)
    backend = detector_module.open_backend(Manifest.read(tmp_path / "e" / "crystals.manifest.json"))
    assert isinstance(backend, Recorder) and opened == [tmp_path / "e" / "crystals.plan"]


def test_truncated_plan_is_refused(tmp_path: Path, machine: dict[str, str]) -> None:
    _plan_engine(tmp_path / "e")
    plan = tmp_path / "e" / "crystals.plan"
    plan.write_bytes(plan.read_bytes()[:100])
    with pytest.raises(EngineIncompatible, match="truncated or replaced"):
        Detector.load(tmp_path / "e")


def test_plan_without_manifest_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "lonely.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineNotFound, match="not an engine"):
        Detector.load(plan)


@pytest.mark.parametrize(
    "content",
    ['{"format": "crystal-rt-engine", "format_version": 1, "na', '{"format": "someone-elses-engine"}', "{}"],
    ids=["truncated", "foreign", "empty"],
)
def test_bad_manifest_is_refused(tmp_path: Path, content: str) -> None:
    manifest = _plan_engine(tmp_path / "e")
    manifest.write_text(content)
    with pytest.raises(EngineIncompatible) as err:
        Detector.load(tmp_path / "e")
    assert "crystals.manifest.json" in str(err.value)


def test_rtx_plan_is_not_run_by_tensorrt(tmp_path: Path, machine: dict[str, str]) -> None:
    _plan_engine(tmp_path / "e", backend="tensorrt-rtx")
    with pytest.raises(EngineIncompatible, match="unknown backend"):
        Detector.load(tmp_path / "e")


def test_manifest_stores_names(tmp_path: Path) -> None:
    manifest = _plan_engine(tmp_path / "e", build_options=BuildOptions(hardware_compat="ampere+").to_dict())
    data = json.loads(manifest.read_text())
    assert data["build_options"]["hardware_compat"] == "ampere+"


def test_compatibility_rules() -> None:
    assert version_ok("10.3.0", "10.3.0", False)
    assert not version_ok("10.3.0", "10.4.0", False)
    assert version_ok("10.3.0", "10.8.0", True) and not version_ok("10.8.0", "10.3.0", True)
    assert version_ok("10.3.0", "11.1.0", True)  # TensorRT 11 runs TensorRT 10 version-compatible plans
    assert not version_ok("11.1.0", "10.16.0", True) and not version_ok("8.6.1", "11.1.0", True)
    assert version_ok("8.6.1", "10.3.0", True) and not version_ok("8.5.0", "8.6.1", True)
    assert cc_ok("8.6", "8.6", "none") and not cc_ok("8.6", "8.9", "none")
    assert cc_ok("8.6", "8.9", "ampere+") and cc_ok("8.6", "12.0", "ampere+")
    assert not cc_ok("8.6", "7.5", "ampere+") and not cc_ok("8.6", "8.7", "ampere+")  # Turing, Jetson


# --- options ----------------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == parse_size("2GiB") == 2 << 30
    assert parse_size("1.5g") == 3 << 29
    assert parse_size(4096) == 4096
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(CrystalRtError):
            parse_size(bad)


def test_build_options_validation() -> None:
    with pytest.raises(CrystalRtError, match=r"0\.\.5"):
        BuildOptions(opt_level=6)
    with pytest.raises(CrystalRtError, match="hardware compatibility"):
        BuildOptions(hardware_compat="turing+")
    with pytest.raises(CrystalRtError, match="unknown TensorRT build option"):
        BuildOptions.from_dict({"fp16": True})


def test_cli_options_become_build_options(tmp_path: Path) -> None:
    from crystal_rt.cli.build_engine import tensorrt_options

    args = build_parser().parse_args(
        ["build-engine", "m.onnx", "-o", str(tmp_path), "--backend", "tensorrt", "--workspace", "2G",
         "--timing-cache", str(tmp_path / "t.cache"), "--opt-level", "5", "--hardware-compat", "same-cc",
         "--version-compatible", "--refit"]
    )  # fmt: skip
    opts = tensorrt_options(args)
    assert opts == BuildOptions(2 << 30, tmp_path / "t.cache", 5, "same-cc", True, True)
    assert opts.to_dict()["timing_cache"] == str(tmp_path / "t.cache")
    assert "timing_cache" not in opts.cache_key_dict()
    defaults = tensorrt_options(build_parser().parse_args(["build-engine", "m", "-o", "d"]))
    assert defaults == BuildOptions()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build-engine", "m", "-o", "d", "--opt-level", "7"])


# --- precision routing and configuration, with a fake TensorRT ---------------------------------


def fake_trt(*, fp16_flag: bool, strongly_typed: bool = True) -> Any:
    """A FAKE ``tensorrt`` module (TensorRT's builder needs a GPU): only the enums the routing reads."""
    builder_flags = {"VERSION_COMPATIBLE": "VERSION_COMPATIBLE", "REFIT": "REFIT"}
    if fp16_flag:
        builder_flags["FP16"] = "FP16"
    creation = {"STRONGLY_TYPED": 1} if strongly_typed else {}
    return SimpleNamespace(
        __name__="fake_tensorrt",
        BuilderFlag=SimpleNamespace(**builder_flags),
        NetworkDefinitionCreationFlag=SimpleNamespace(**creation),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        HardwareCompatibilityLevel=SimpleNamespace(
            AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_CC"
        ),
    )


def _info(precision: str, target: str = "tensorrt") -> CalibrationInfo:
    return CalibrationInfo(precision=precision, target=target, method="m", tool="nvidia-modelopt 0.47.0",
                           source_onnx_sha256="0" * 64)  # fmt: skip


@pytest.mark.parametrize(
    ("fp16_flag", "precision", "info", "expected"),
    [
        (True, "fp32", None, PrecisionRoute("fp32", True, cleared_flags=("TF32",))),
        (False, "fp32", None, PrecisionRoute("fp32", True, cleared_flags=("TF32",))),
        # TensorRT 10.x, JetPack 6: the weak FP16 flag, box/NMS/RoiAlign layers pinned to FP32
        (
            True,
            "fp16",
            None,
            PrecisionRoute("fp16", False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), pin_fp32=True),
        ),
        (True, "fp16", "fp16", PrecisionRoute("fp16", True, (), "autocast-fp16")),
        (False, "fp16", "fp16", PrecisionRoute("fp16", True, (), "autocast-fp16")),  # TensorRT >= 11
        (True, "int8", "int8", PrecisionRoute("int8", True, (), "qdq-int8")),
        (False, "int8", "int8", PrecisionRoute("int8", True, (), "qdq-int8")),
    ],
)
def test_precision_routes(
    fp16_flag: bool, precision: str, info: str | None, expected: PrecisionRoute
) -> None:
    trt = fake_trt(fp16_flag=fp16_flag)
    assert route_precision(trt, precision, _info(info) if info else None, "m.onnx") == expected


@pytest.mark.parametrize(
    ("fp16_flag", "precision", "info", "message"),
    [
        (False, "fp16", None, "no FP16 builder flag"),
        (True, "int8", None, "INT8 needs a Q/DQ graph calibrated for TensorRT, this is an FP32 graph"),
        (True, "int8", ("int8", "onnxruntime"), "made for onnxruntime"),
        (True, "int8", ("fp16", "tensorrt"), "this is a fp16 graph"),
        (True, "fp32", ("int8", "tensorrt"), "calibrated for int8"),
        (True, "fp16", ("int8", "tensorrt"), "this is a int8 graph"),
    ],
)
def test_precision_mismatches_are_refused(
    fp16_flag: bool, precision: str, info: tuple[str, str] | None, message: str
) -> None:
    trt = fake_trt(fp16_flag=fp16_flag)
    with pytest.raises(BackendUnavailable) as err:
        route_precision(trt, precision, _info(*info) if info else None, "m.onnx")
    assert message in str(err.value) and "m.onnx" in str(err.value) and len(str(err.value).splitlines()) == 1


class RecordingConfig:
    """A fake IBuilderConfig recording what is set on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.calls.append(("pool", (pool, size)))

    def set_flag(self, flag: Any) -> None:
        self.calls.append(("flag", flag))

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "calls":
            self.calls.append((name, value))
        object.__setattr__(self, name, value)

    builder_optimization_level = 3
    hardware_compatibility_level = None


def test_configure_sets_what_was_asked() -> None:
    trt = fake_trt(fp16_flag=True)
    config = RecordingConfig()
    options = BuildOptions(
        workspace=1 << 30, opt_level=4, hardware_compat="ampere+", version_compatible=True, refit=True
    )
    configure(trt, config, options, PrecisionRoute("fp16", False, ("FP16",)))
    assert config.calls == [
        ("pool", ("WORKSPACE", 1 << 30)),
        ("builder_optimization_level", 4),
        ("hardware_compatibility_level", "AMPERE_PLUS"),
        ("flag", "FP16"),
        ("flag", "VERSION_COMPATIBLE"),
        ("flag", "REFIT"),
    ]


def test_configure_refuses_missing_features() -> None:
    trt = fake_trt(fp16_flag=False)
    with pytest.raises(BackendUnavailable, match="no builder flag FP16"):
        configure(trt, RecordingConfig(), BuildOptions(), PrecisionRoute("fp16", False, ("FP16",)))
    del trt.HardwareCompatibilityLevel
    with pytest.raises(BackendUnavailable, match=r"hardware-compat ampere\+"):
        configure(
            trt, RecordingConfig(), BuildOptions(hardware_compat="ampere+"), PrecisionRoute("fp32", True)
        )


def test_network_flags() -> None:
    assert network_flags(fake_trt(fp16_flag=True), strongly_typed=True) == 1 << 1
    assert network_flags(fake_trt(fp16_flag=True), strongly_typed=False) == 0
    assert network_flags(fake_trt(fp16_flag=True, strongly_typed=False), strongly_typed=True) == 0
