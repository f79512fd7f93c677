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


@pytest.mark.slow  # heavy: runs in make test-all / CI, not in a plain pytest
def test_doctor_gpu_acceptance_run_on_the_simulated_gpu(tmp_path, real_images) -> None:
    """The acceptance command end to end, from a plain process (kernels, engines, JSON)."""
    import json
    import os
    import subprocess
    import sys

    from crystal_rt.testing import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "crystal_rt.cli.main", "--simulated-gpu", "doctor", "--gpu", "--runs", "1"]
    cmd += ["--images", str(real_images[0].parent), "--json", str(out)]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600, env=dict(os.environ, COLUMNS="200")
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["gpu"]["name"] == "crystal-rt simulated GPU"
    names = [c["name"] for c in report["checks"]]
    for expected in (
        "CUDA kernels build for this GPU",
        "CLAHE on the GPU equals OpenCV",
        "mask paste on the GPU equals the CPU",
        "time: CLAHE 8-bit 2048x2048",
        "parity fp32 vs ONNX Runtime CPU",
        "latency fp16 end to end (GPU path, decode excluded)",
    ):
        assert expected in names
    clahe = next(c for c in report["checks"] if c["name"] == "CLAHE on the GPU equals OpenCV")
    assert set(clahe["data"]["differing_pixels"]) >= {p.name for p in real_images}


def test_doctor_gpu_lists_failing_checks(capsys, monkeypatch, tmp_path) -> None:
    """A kernel that disagrees with the CPU: exit 1 and the failing check named; without TensorRT the
    kernel half still runs."""
    from crystal_rt.build import gpucheck
    from crystal_rt.cli.main import main
    from crystal_rt.runtime import postprocess
    from crystal_rt.testing import simulated_gpu, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    monkeypatch.setattr(gpucheck, "SYNTHETIC_SHAPES", [(64, 96, False, 8), (40, 33, True, 16)])
    import dataclasses

    real_paste = postprocess.paste_mask

    def inverted(*args: object) -> object:  # a CPU reference the kernel cannot match
        mask = real_paste(*args)  # type: ignore[arg-type]
        return dataclasses.replace(mask, crop=~mask.crop)

    monkeypatch.setattr(postprocess, "paste_mask", inverted)
    monkeypatch.setenv("COLUMNS", "300")
    with simulated_gpu(tensorrt=False):
        code = main(["doctor", "--gpu", "--runs", "1", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 1 and "mask paste on the GPU equals the CPU" in err
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["ok"] and any(
        c["name"] == "TensorRT" and "not installed" in c["detail"] for c in report["checks"]
    )


def test_doctor_gpu_writes_its_report_whatever_fails(capsys, monkeypatch, tmp_path) -> None:
    """A CUDA error in the kernel half is that check's FAIL: the other images are still checked, the
    TensorRT half still runs, and the JSON is always written (also when --gpu refuses to start)."""
    import json

    from crystal_rt.build import gpucheck
    from crystal_rt.cli.main import main
    from crystal_rt.testing import simulated_gpu, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    monkeypatch.setattr(gpucheck, "SYNTHETIC_SHAPES", [(64, 96, False, 8), (40, 33, True, 8)])
    ran: list[str] = []

    def engine_half(precision: str, *args: object, **kwargs: object) -> list[gpucheck.Check]:
        ran.append(precision)  # the real engine half is the acceptance test's (above)
        return [gpucheck.Check(f"build {precision}", True, "stand-in")]

    monkeypatch.setattr(gpucheck, "engine_checks", engine_half)
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "r.json"
    with simulated_gpu() as gpu:
        gpu.fail_next("cuLaunchKernel", "CUDA_ERROR_LAUNCH_FAILED")  # the first image's first kernel
        assert main(["doctor", "--gpu", "--runs", "1", "--json", str(out)]) == 1
        report = json.loads(out.read_text())
        checks = {c["name"]: c for c in report["checks"]}
        clahe = checks["CLAHE on the GPU equals OpenCV"]
        assert not clahe["ok"] and "CUDA_ERROR_LAUNCH_FAILED" in str(clahe["data"]["differing_pixels"])
        assert clahe["data"]["differing_pixels"]["synthetic-40x33-rgb8"] == 0  # the next image ran
        assert checks["mask paste on the GPU equals the CPU"]["ok"] and ran == ["fp32", "fp16"]
        timing = checks["time: CLAHE 8-bit 2048x2048"]
        assert report["timing_targets"] == "informational" and timing["data"]["target"] == "informational"
        out.unlink()
        gpu.fail_next("cuStreamCreate", "CUDA_ERROR_OUT_OF_MEMORY")  # the kernel half cannot even start
        assert main(["doctor", "--gpu", "--runs", "1", "--json", str(out)]) == 1
        checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
        assert "CUDA_ERROR_OUT_OF_MEMORY" in checks["device stages"]["detail"] and ran[-2:] == [
            "fp32",
            "fp16",
        ]
    capsys.readouterr()
    out.unlink()
    with simulated_gpu(driver_version=12060):  # refused before any check: the report says why
        assert main(["doctor", "--gpu", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert not report["ok"] and "NVRTC is CUDA 13" in report["checks"][0]["detail"]
