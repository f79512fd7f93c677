"""What a benchmark ran on: CPU, cores, OS, Python, library versions, GPU and driver, the engine."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..cuda.binding import DRIVER, override

# distribution names to report; the first installed name of each group wins
_PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "pillow": ("pillow",),
    "crystal-rt": ("crystal-rt",),
    "tensorrt": ("tensorrt",),
}


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    try:
        lines = info.read_text().splitlines() if info.is_file() else []
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def package_versions() -> dict[str, str | None]:
    """Installed versions read from package metadata (nothing is imported)."""
    found: dict[str, str | None] = {}
    for key, names in _PACKAGES.items():
        found[key] = None
        for name in names:
            try:
                found[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def _nvidia_smi(*args: str) -> str | None:
    """``nvidia-smi ARGS`` output, or None where there is no nvidia-smi or it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs from ``nvidia-smi`` (name, driver, total memory); empty where there is none."""
    out = _nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if out is None:
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory_total": parts[2]})
    return rows


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory used by process ``pid`` (MiB, from ``nvidia-smi``); None without a GPU."""
    out = _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    if out is None:
        return None
    used = 0.0
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                used += float(parts[1])
            except ValueError:
                continue
    return used


def _simulated_gpu() -> str | None:
    """The simulated GPU's name while crystal_rt.testing.simulated_gpu is active (timings are then
    the CPU emulator's wall times), else None."""

    stand_in = override(DRIVER)
    return str(getattr(stand_in, "name", "simulated")) if stand_in is not None else None


def collect_environment(manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine, software and engine a benchmark ran with (JSON-ready)."""
    uname = platform.uname()
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "machine": uname.machine,
        "os": f"{uname.system} {uname.release}",
        "platform": platform.platform(),
        "hostname": uname.node,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": package_versions(),
        "gpus": gpus(),
        "simulated_gpu": _simulated_gpu(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else [],
    }
    if manifest is not None:
        env["engine_manifest"] = manifest
    return env
