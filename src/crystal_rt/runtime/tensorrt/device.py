"""What this machine has: TensorRT version, GPU name, compute capability, CUDA driver version.

These are the functions tests monkeypatch to pretend to be another machine (a GPU cannot be
faked). Without an NVIDIA driver they return None: cuda-python *raises* when libcuda is missing,
which is caught here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from ...cuda.binding import driver_if_installed, override
from ...cuda.probe import probe
from .modules import TENSORRT, tensorrt_installed


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.9"
    memory_bytes: int


def _driver() -> Any | None:
    """The driver module where a GPU is usable (see :func:`crystal_rt.cuda.probe.probe`), else None."""

    return driver_if_installed() if probe().usable else None


def gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs the driver reports (empty without a driver or GPU)."""
    driver = _driver()
    if driver is None:
        return []
    err, count = driver.cuDeviceGetCount()
    if err != driver.CUresult.CUDA_SUCCESS:
        return []
    found = []
    attr = driver.CUdevice_attribute
    for index in range(int(count)):
        _, dev = driver.cuDeviceGet(index)
        _, raw = driver.cuDeviceGetName(256, dev)
        name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        _, major = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        _, minor = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        _, memory = driver.cuDeviceTotalMem(dev)
        found.append(GpuInfo(index, name, f"{int(major)}.{int(minor)}", int(memory)))
    return found


def gpu_count() -> int:
    return len(gpus())


def gpu(device: int = 0) -> GpuInfo | None:
    found = gpus()
    return found[device] if 0 <= device < len(found) else None


def compute_capability(device: int = 0) -> str | None:
    """This machine's compute capability (``"8.9"``), or None without a GPU."""
    info = gpu(device)
    return info.compute_capability if info else None


def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports (``"13.0"``), or None without a driver."""
    driver = _driver()
    if driver is None:
        return None
    err, version = driver.cuDriverGetVersion()
    if err != driver.CUresult.CUDA_SUCCESS:
        return None
    return f"{int(version) // 1000}.{int(version) % 1000 // 10}"


def tensorrt_version(module: str = TENSORRT) -> str | None:
    """The installed TensorRT's version (imports it; None where it is not installed)."""
    if not tensorrt_installed(module):
        return None

    stand_in = override(module)
    if stand_in is not None:
        return str(stand_in.__version__)
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except ImportError:
        return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
