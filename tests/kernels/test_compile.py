"""Every kernels/*.cu compiles for every target arch with NVRTC (and nvcc when present), without
register spills; the NVRTC cache is hit on a second build and invalidated by new options."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crystal_rt.cuda import build

KERNELS = build.kernel_names()
ARCHS = list(build.DEFAULT_ARCHS)


def _nvrtc_or_skip() -> None:
    pytest.importorskip(
        "cuda.bindings.nvrtc", reason="cuda-python is not installed (pip install cuda-python)"
    )
    try:
        build.nvrtc_version()
    except Exception as exc:  # the NVRTC shared library itself may be missing
        pytest.skip(f"NVRTC is not usable (pip install nvidia-cuda-nvrtc): {exc}")


def _report(lines: list[str], compiler: str, resources: tuple[build.KernelResources, ...]) -> None:
    for r in resources:
        lines.append(
            f"{compiler:8} {r.arch:7} {r.function:30} {r.registers:4d} "
            f"{f'{r.spill_stores}/{r.spill_loads}':>13} {r.shared_bytes:7d}"
        )


def _assert_no_spills(resources: tuple[build.KernelResources, ...], what: str) -> None:
    spilled = [
        f"{r.function}@{r.arch}: {r.spill_stores} B stored / {r.spill_loads} B loaded"
        for r in resources
        if r.spills
    ]
    assert not spilled, f"{what}: register spills: {'; '.join(spilled)}"


def test_kernel_sources_exist() -> None:
    assert {"letterbox", "paste"} <= set(KERNELS), KERNELS


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", KERNELS)
def test_nvrtc_compiles_without_spills(
    name: str, arch: str, kernel_cache: Path, resource_report: list[str]
) -> None:
    _nvrtc_or_skip()
    compiled = build.compile_kernel(name, arch)
    assert compiled.arch == arch
    assert compiled.image[:4] == b"\x7fELF", "NVRTC must return a CUBIN (ELF) for sm_XX"
    assert compiled.resources, f"no ptxas report in the NVRTC log:\n{compiled.log}"
    assert "--fmad=false" in compiled.options and "--use_fast_math" not in compiled.options
    _report(resource_report, "nvrtc", compiled.resources)
    _assert_no_spills(compiled.resources, f"{name}.cu (NVRTC)")


def _nvcc_archs(nvcc: str) -> list[str]:
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=False).stdout
    known = set(re.findall(r"sm_\d+", out))
    return [a for a in ARCHS if a in known] if known else ARCHS


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("name", KERNELS)
def test_nvcc_compiles_without_spills(name: str, tmp_path: Path, resource_report: list[str]) -> None:
    nvcc = shutil.which("nvcc")
    assert nvcc is not None
    archs = _nvcc_archs(nvcc)
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs]
    cmd = [
        nvcc,
        "--fatbin",
        "--threads",
        "2",
        "--fmad=false",
        "-std=c++17",
        "-Xptxas",
        "-v",
        f"-I{build.KERNEL_DIR}",
        *gencode,
        str(build.kernel_path(name)),
        "-o",
        str(tmp_path / f"{name}.fatbin"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{proc.stderr}"
    resources = build.parse_ptxas_log(proc.stderr + proc.stdout)
    assert {r.arch for r in resources} == set(archs), proc.stderr
    _report(resource_report, "nvcc", resources)
    _assert_no_spills(resources, f"{name}.cu (nvcc)")


def test_cache_hit_and_invalidation(kernel_cache: Path) -> None:
    _nvrtc_or_skip()
    first = build.compile_kernel("paste", "sm_87")
    second = build.compile_kernel("paste", "sm_87")
    assert second.from_cache and second.key == first.key and second.image == first.image
    assert second.cache_path is not None and second.cache_path.parent == kernel_cache
    assert second.resources == first.resources
    changed = build.compile_kernel("paste", "sm_87", extra_options=["-DCRT_CACHE_TEST=1"])
    assert not changed.from_cache and changed.key != first.key
    again = build.compile_kernel("paste", "sm_87", extra_options=["-DCRT_CACHE_TEST=1"])
    assert again.from_cache
    other_arch = build.compile_kernel("paste", "sm_86")
    assert other_arch.key != first.key


def test_cache_key_covers_included_headers(tmp_path: Path) -> None:
    (tmp_path / "h.cuh").write_text("#define X 1\n")
    (tmp_path / "k.cu").write_text('#include "h.cuh"\nextern "C" __global__ void k() {}\n')
    files = build.included_files(tmp_path / "k.cu", (tmp_path,))
    assert [f.name for f in files] == ["k.cu", "h.cuh"]
    before = build.source_digest(tmp_path / "k.cu")
    (tmp_path / "h.cuh").write_text("#define X 2\n")
    # source_digest resolves includes next to the source first
    assert build.source_digest(tmp_path / "k.cu") != before
    opts = build.compile_options("sm_87")
    assert build.cache_key(tmp_path / "k.cu", opts, "sm_87", (13, 0)) != build.cache_key(
        tmp_path / "k.cu", opts, "sm_87", (13, 1)
    )


def test_corrupt_cache_entry_is_rebuilt(kernel_cache: Path) -> None:
    _nvrtc_or_skip()
    first = build.compile_kernel("letterbox", "sm_75")
    assert first.cache_path is not None
    first.cache_path.with_suffix(".json").write_text("{not json")
    rebuilt = build.compile_kernel("letterbox", "sm_75")
    assert not rebuilt.from_cache and rebuilt.image == first.image


def test_ptx_target(kernel_cache: Path) -> None:
    _nvrtc_or_skip()
    ptx = build.compile_kernel("paste", "compute_87")
    assert ptx.is_ptx and b".entry crt_paste_masks" in ptx.image and ptx.resources == ()


def test_compile_error_carries_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nvrtc_or_skip()
    bad = tmp_path / "kernels"
    bad.mkdir()
    (bad / "broken.cu").write_text('extern "C" __global__ void broken() { int x = ; }\n')
    monkeypatch.setattr(build, "KERNEL_DIR", bad)
    monkeypatch.setenv("CRYSTAL_RT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.KernelBuildError) as info:
        build.compile_kernel("broken", "sm_87")
    assert "broken.cu" in str(info.value) and "error" in info.value.log


def test_arch_parsing() -> None:
    assert build.normalize_arch("87") == "sm_87"
    assert build.normalize_arch("8.7") == "sm_87"
    assert build.normalize_arch("compute_90") == "compute_90"
    assert build.parse_arch_list("sm_75, 80,sm_75") == ["sm_75", "sm_80"]
    assert build.parse_arch_list("all") == ARCHS
    with pytest.raises(build.KernelBuildError):
        build.normalize_arch("kepler")
    with pytest.raises(build.KernelBuildError):
        build.compile_options("sm_87", ["--use_fast_math"])


def test_parse_ptxas_log() -> None:
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k1' for 'sm_80'
ptxas info    : Function properties for k1
    8 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_80'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers
"""
    k1, k2 = build.parse_ptxas_log(log)
    assert (k1.function, k1.arch, k1.registers, k1.spill_stores, k1.spill_loads, k1.shared_bytes) == (
        "k1",
        "sm_80",
        32,
        16,
        8,
        2048,
    )
    assert k1.spills == 24 and k2.spills == 0 and k2.registers == 12


def test_ptx_compile_leaves_python_bytes_alone(tmp_path: Path) -> None:
    """NVRTC writes its one-byte PTX log into the buffer crystal-rt hands it: with ``b" " * 1`` that
    was CPython's shared b" ", and afterwards ``b"a b".split(b" ")`` no longer split (h11/uvicorn
    byte parsing broke in `serve`). In a subprocess, so a regression cannot poison this process."""
    _nvrtc_or_skip()
    code = (
        "from crystal_rt.cuda import build\n"
        "build.compile_kernel('paste', 'compute_87', use_cache=False)\n"
        "print(b'a b'.split(b' '), repr(b' '), bytes(1))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[b'a', b'b'] b' ' b'\\x00'"
