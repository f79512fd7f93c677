"""One install line per GPU target (crystal_rt.cuda.installs): docs/installs.md shows the same table,
the NVRTC/driver mismatch message and ``doctor`` name the line of the machine they run on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crystal_rt.cuda.installs import TARGETS, nvrtc_pin, target_for
from crystal_rt.cuda.probe import nvrtc_mismatch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "installs.md"


def test_the_docs_table_is_the_code_table() -> None:
    text = DOCS.read_text()
    block = re.search(r"<!-- gpu-targets:[^\n]*-->\n(.*?)<!-- /gpu-targets -->", text, re.S)
    assert block is not None, "docs/installs.md lost its gpu-targets table"
    rows = [line for line in block.group(1).splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [f"| {t.machine} | {t.cuda} | `{t.install}` |" for t in TARGETS]


def test_each_target_and_its_nvrtc() -> None:
    assert target_for((12, 6), integrated=True).key == "jetpack6"  # type: ignore[union-attr]
    assert "cuda-cu12" in target_for((12, 6), integrated=True).install  # type: ignore[union-attr]
    assert target_for((13, 0), integrated=True).key == "jetpack7"  # type: ignore[union-attr]
    assert target_for((12, 8), integrated=False).key == "x86-cu12"  # type: ignore[union-attr]
    assert target_for((13, 1), integrated=False).key == "x86-cu13"  # type: ignore[union-attr]
    assert target_for((11, 8), integrated=False) is None and target_for(None, integrated=False) is None
    assert nvrtc_pin((13, 0)) == "nvidia-cuda-nvrtc==13.0.*"
    assert nvrtc_pin((12, 6), integrated=True) == "nvidia-cuda-nvrtc-cu12==12.6.*"


def test_the_mismatch_names_this_machines_line() -> None:
    jetson = nvrtc_mismatch((12, 6), (13, 0), integrated=True)
    assert jetson is not None and 'pip install "crystal-rt[cuda-cu12]"' in jetson and "gpu-cu" not in jetson
    pc = nvrtc_mismatch((12, 6), (13, 0))
    assert pc is not None and 'pip install "crystal-rt[gpu-cu12]" tensorrt-cu12' in pc
    # NVRTC one minor ahead of the driver: PTX does not load, but the install is the right one
    minor = nvrtc_mismatch((13, 0), (13, 1), ptx=True)
    assert minor is not None and 'pip install "nvidia-cuda-nvrtc==13.0.*"' in minor
    assert "gpu-cu13" not in minor and "crystal-rt[" not in minor
    assert nvrtc_mismatch((13, 0), (13, 1)) is None  # a CUBIN of the same major loads
    assert nvrtc_mismatch((13, 2), (13, 1), ptx=True) is None


def test_doctor_prints_the_jetson_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On JetPack 6 (integrated GPU, CUDA 12.6 driver) with the CUDA 13 install: doctor's line is the
    JetPack 6 one and --gpu refuses, naming cuda-cu12 (not gpu-cu12, whose onnxruntime-gpu PyPI lacks)."""
    from crystal_rt.cli.main import main
    from crystal_rt.testing import simulated_gpu, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    monkeypatch.setenv("COLUMNS", "400")
    with simulated_gpu(driver_version=12060, integrated=True, compute_capability="8.7"):
        assert main(["doctor"]) == 0
        out = capsys.readouterr().out
        assert "JetPack 6.x" in out and 'pip install "crystal-rt[cuda-cu12]"' in out
        assert main(["doctor", "--gpu"]) == 1
        err = capsys.readouterr().err
        assert "NVRTC is CUDA 13" in err and "crystal-rt[cuda-cu12]" in err
    with simulated_gpu(driver_version=13000):
        assert main(["doctor"]) == 0
        assert 'pip install "crystal-rt[gpu-cu13]" tensorrt-cu13' in capsys.readouterr().out
