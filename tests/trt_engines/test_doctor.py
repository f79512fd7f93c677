"""``crystal-rt doctor`` runs anywhere; ``--gpu`` without a GPU exits 2 with one clear line.

Uses ``crystal-rt``'s own parser once ``doctor`` is registered in ``cli/main.py``; until then, the
doctor module's ``add_parser`` on a bare parser (the same code path below the command name).
"""

from __future__ import annotations

import argparse

import pytest

from crystal_rt.cli import doctor
from crystal_rt.cli.main import COMMANDS, main
from crystal_rt.runtime.tensorrt import device


def _doctor(argv: list[str]) -> int:
    if "doctor" in COMMANDS:
        return main(["doctor", *argv])
    parser = argparse.ArgumentParser(prog="crystal-rt")
    doctor.add_parser(parser.add_subparsers())
    args = parser.parse_args(["doctor", *argv])
    return int(args.run(args))


def test_doctor_reports_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert _doctor([]) == 0
    out = capsys.readouterr().out
    for row in (
        "NVIDIA driver",
        "GPU(s)",
        "TensorRT",
        "TensorRT-RTX",
        "ONNX Runtime",
        "NVRTC",
        "nvcc",
        "ModelOpt",
    ):
        assert row in out
    assert "onnxruntime fp32 / int8" in out and "tensorrt fp32 / fp16 / int8" in out
    if device.gpu_count() == 0:
        assert "needs" in out and "NVIDIA GPU" in out


def test_doctor_gpu_without_gpu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if device.gpu_count():
        pytest.skip("a GPU is present: doctor --gpu would run its checks")
    assert _doctor(["--gpu"]) == doctor.NO_GPU_EXIT == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no NVIDIA driver" in err


def test_doctor_survives_broken_probes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(device, "cuda_driver_version", broken)
    assert _doctor([]) == 0
    assert "unavailable (RuntimeError: driver exploded)" in capsys.readouterr().out


def test_doctor_compares_nvrtc_with_the_driver(capsys, monkeypatch) -> None:
    """A CUDA 12.6 driver (JetPack 6) with NVRTC 13: doctor says which extra to install, and
    --gpu refuses to go on."""
    from crystal_rt.cli.main import main
    from crystal_rt.testing import simulated_gpu, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    monkeypatch.setenv("COLUMNS", "400")
    with simulated_gpu(driver_version=12060):
        assert main(["doctor"]) == 0
        out = capsys.readouterr().out
        assert "driver CUDA 12.6" in out and 'pip install "crystal-rt[gpu-cu12]"' in out
        assert main(["doctor", "--gpu"]) == 1
        err = capsys.readouterr().err
        assert "NVRTC is CUDA 13" in err and "crystal-rt[gpu-cu12]" in err
