"""A real NVIDIA builder without a GPU: TensorRT for RTX builds ahead of time through the SHARED builder
code (``crystal_rt.runtime.tensorrt.builder``, ``build_tensorrt(module="tensorrt_rtx")``).

* the demo model's backbone+FPN subgraph builds for SM89 (and every other offered target we list);
* an INT8 Q/DQ graph made for tensorrt (ModelOpt, if importable) builds the same way;
* the full core graph does not parse: the first failure names a node and its op type (NonZero or
  RoiAlign: their plugins are not shipped with TensorRT-RTX).

Skips cleanly where ``tensorrt_rtx`` is not installed (``pip install tensorrt-rtx-cu13``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from crystal_rt.errors import BackendUnavailable, CrystalRtError
from crystal_rt.runtime.tensorrt.modules import TENSORRT_RTX, load_tensorrt, tensorrt_installed

if not tensorrt_installed(TENSORRT_RTX):
    pytest.skip("tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13)", allow_module_level=True)

from trt_subgraph import cut_backbone_fpn

from crystal_rt.assets import demo_model
from crystal_rt.runtime.artifacts import Manifest
from crystal_rt.runtime.tensorrt.build import build_tensorrt
from crystal_rt.runtime.tensorrt.builder import (
    OnnxImportError,
    build_plan,
    compute_capability_names,
)
from crystal_rt.runtime.tensorrt.options import BuildOptions
from crystal_rt.runtime.tensorrt.precision import PrecisionRoute


@pytest.fixture(scope="module")
def rtx():  # type: ignore[no-untyped-def]
    return load_tensorrt("TensorRT-RTX tests", TENSORRT_RTX)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "cache"))


def test_offered_targets(rtx) -> None:  # type: ignore[no-untyped-def]
    names = compute_capability_names(rtx)
    print("TensorRT-RTX", rtx.__version__, "ahead-of-time targets:", names)
    assert "SM89" in names


@pytest.mark.parametrize("cc", ["8.9", "12.0"])
def test_fpn_builds_ahead_of_time(cc: str, demo_fpn: tuple[Path, list[str]], tmp_path: Path) -> None:
    source, outputs = demo_fpn
    start = time.perf_counter()
    manifest = build_tensorrt(source, tmp_path / "out", "fpn", "fp32", module=TENSORRT_RTX, target_cc=cc)
    seconds = time.perf_counter() - start
    plan = manifest.engine_path
    assert plan.is_file() and plan.stat().st_size > 1_000_000
    assert manifest.backend == "tensorrt-rtx" and manifest.compute_capability == cc
    assert manifest.build_options["hardware_compat"] == "none"  # names, never enum integers
    assert manifest.build_options["precision_route"]["strongly_typed"] is True
    assert Manifest.read(manifest.path).engine_sha256 == manifest.engine_sha256
    size = plan.stat().st_size
    print(f"FPN subgraph ({len(outputs)} maps) -> SM{cc.replace('.', '')}: {size} bytes, {seconds:.2f} s")
    # a second identical build comes from the engine cache
    again = build_tensorrt(source, tmp_path / "again", "fpn", "fp32", module=TENSORRT_RTX, target_cc=cc)
    assert again.build_options["cache"] == "hit" and again.engine_sha256 == manifest.engine_sha256


def test_sm87_is_refused_in_one_sentence(demo_fpn: tuple[Path, list[str]], tmp_path: Path, rtx) -> None:  # type: ignore[no-untyped-def]
    if "SM87" in compute_capability_names(rtx):
        pytest.skip("this TensorRT-RTX offers SM87")
    with pytest.raises(BackendUnavailable, match=r"SM87.*SM89"):
        build_tensorrt(demo_fpn[0], tmp_path, "fpn", "fp32", module=TENSORRT_RTX, target_cc="8.7")


def test_builder_options_reach_the_config(rtx, demo_fpn: tuple[Path, list[str]]) -> None:  # type: ignore[no-untyped-def]
    options = BuildOptions.from_args(workspace="256M", opt_level=1, hardware_compat="ampere+")
    result = build_plan(rtx, demo_fpn[0], PrecisionRoute("fp32", True), options, target_cc="SM89")
    assert len(result.plan) > 1_000_000


@pytest.mark.parametrize("option", ["refit", "version_compatible"])
def test_a_refused_build_quotes_tensorrt(option: str, rtx, demo_fpn: tuple[Path, list[str]]) -> None:  # type: ignore[no-untyped-def]
    """Without a GPU, TensorRT-RTX cannot build REFIT (its JIT needs CUDA) or VERSION_COMPATIBLE (no lean
    runtime library): the error is one CrystalRtError quoting TensorRT's log and naming the file."""
    options = BuildOptions.from_args(**{option: True})
    with pytest.raises(CrystalRtError, match=r"TensorRT could not build this graph: .*Error Code") as err:
        build_plan(rtx, demo_fpn[0], PrecisionRoute("fp32", True), options, target_cc="SM89")
    assert str(demo_fpn[0]) in str(err.value)


def _int8_graph(tmp_path: Path) -> Path:
    pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt (calibrate-trt extra) not installed")
    from crystal_rt.calibration.api import calibrate
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic

    write_synthetic(
        tmp_path / "drops", SynthOptions(count=8, seed=11, size=(512, 512), colour="gray", bit_depth="8")
    )
    out = tmp_path / "crystals.int8.onnx"
    calibrate(demo_model(), tmp_path / "drops" / "images", out, precision="int8", target="tensorrt",
              num_images=4, held_out=4)  # fmt: skip
    return out


def test_int8_fpn_builds_ahead_of_time(tmp_path: Path) -> None:
    graph = _int8_graph(tmp_path)
    cut = tmp_path / "int8_fpn.onnx"
    cut_backbone_fpn(graph, cut)
    manifest = build_tensorrt(cut, tmp_path / "out", "fpn8", "int8", module=TENSORRT_RTX, target_cc="8.9")
    assert manifest.engine_bytes > 0 and manifest.build_options["precision_route"]["graph"] == "qdq-int8"
    print(f"INT8 FPN subgraph -> SM89: {manifest.engine_bytes} bytes")


def test_full_graph_names_the_first_unsupported_node(rtx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OnnxImportError) as err:
        build_plan(rtx, demo_model(), PrecisionRoute("fp32", True), BuildOptions(), target_cc="SM89")
    first = err.value.failures[0]
    print(f"first node TensorRT-RTX cannot import: {first}")
    assert first.node_name and first.op_type in ("NonZero", "RoiAlign", "NonMaxSuppression")
    assert first.node_name in str(err.value) and first.op_type in str(err.value)
