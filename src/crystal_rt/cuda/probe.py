"""What the CUDA driver says about this machine, in one sentence a user can act on.

``probe()`` tells apart: cuda-python missing; no NVIDIA driver (libcuda not found); the CUDA
toolkit's stub libcuda; a driver that sees no GPU; a GPU that is present but unusable (kernel
module and user-space driver of different versions, a driver too old for this cuda-python, a GPU
in use by an exclusive process, ...); and a usable GPU. ``usable`` and ``present`` keep "there is a
GPU but something is wrong" from passing for "there is no GPU" (``--backend auto`` then refuses
instead of falling back to the CPU).

It also compares the driver's CUDA version with NVRTC's: NVRTC's PTX needs a driver of at least its
CUDA major (``CUDA_ERROR_UNSUPPORTED_PTX_VERSION`` otherwise), which is what the per-major install
extras (``gpu-cu12``, ``gpu-cu13``) are for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import binding

#: extra to install for each CUDA major of the driver
EXTRA_FOR_MAJOR = {12: "gpu-cu12", 13: "gpu-cu13"}

# cuInit's result -> (status, what it means)
_CUINIT: dict[str, tuple[str, str]] = {
    "CUDA_ERROR_NO_DEVICE": ("no_device", "the NVIDIA driver is installed but sees no GPU"),
    "CUDA_ERROR_STUB_LIBRARY": (
        "no_driver",
        "libcuda.so is the CUDA toolkit's stub library, not the NVIDIA driver's (put the driver's "
        "libcuda first on the library path)",
    ),
    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH": (
        "unusable",
        "the NVIDIA kernel module and the user-space driver are different versions (reboot after a "
        "driver update, or reinstall the driver)",
    ),
    "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE": (
        "unusable",
        "this GPU does not support the CUDA forward-compatibility package in use",
    ),
    "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER": (
        "unusable",
        "the NVIDIA driver is too old for this cuda-python; update the driver or install the "
        "crystal-rt extra for its CUDA major (gpu-cu12 for a CUDA 12 driver)",
    ),
    "CUDA_ERROR_INSUFFICIENT_LOADER_VERSION": (
        "unusable",
        "the CUDA driver loader is too old for this cuda-python; update the NVIDIA driver",
    ),
    "CUDA_ERROR_DEVICE_UNAVAILABLE": (
        "unusable",
        "the GPU is busy or unavailable (exclusive-process compute mode, or taken by another process)",
    ),
    "CUDA_ERROR_OPERATING_SYSTEM": ("unusable", "the operating system refused CUDA (check /dev/nvidia*)"),
}


@dataclass(frozen=True)
class DriverProbe:
    status: str  # "ok", "no_cuda_python", "no_driver", "no_device", "unusable"
    message: str
    driver_cuda: tuple[int, int] | None = None  # the CUDA version the driver supports
    devices: int = 0

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    @property
    def present(self) -> bool:
        """A GPU (and a driver) is there, usable or not."""
        return self.status in ("ok", "unusable")


def _name(code: Any) -> str:
    return str(getattr(code, "name", code))


def probe() -> DriverProbe:
    """The driver's state; never raises."""
    driver = binding.driver_if_installed()
    if driver is None:
        return DriverProbe(
            "no_cuda_python", 'cuda-python is not installed: pip install "crystal-rt[gpu-cu13]"'
        )
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # cuda-python raises (not returns) when libcuda is missing
        return DriverProbe(
            "no_driver", f"no NVIDIA driver on this machine (libcuda not found: {type(exc).__name__})"
        )
    name = _name(err)
    if name != "CUDA_SUCCESS":
        status, meaning = _CUINIT.get(name, ("unusable", "the CUDA driver cannot be initialised"))
        return DriverProbe(status, f"{meaning} (cuInit: {name})")
    version = _driver_cuda(driver)
    err, count = driver.cuDeviceGetCount()
    if _name(err) != "CUDA_SUCCESS" or int(count) == 0:
        return DriverProbe("no_device", "the NVIDIA driver is installed but sees no GPU", version)
    return DriverProbe("ok", f"{int(count)} GPU(s), driver CUDA {_fmt(version)}", version, int(count))


def _driver_cuda(driver: Any) -> tuple[int, int] | None:
    err, version = driver.cuDriverGetVersion()
    if _name(err) != "CUDA_SUCCESS":
        return None
    return int(version) // 1000, int(version) % 1000 // 10


def _fmt(version: tuple[int, int] | None) -> str:
    return "unknown" if version is None else f"{version[0]}.{version[1]}"


def nvrtc_mismatch(
    driver_cuda: tuple[int, int] | None,
    nvrtc: tuple[int, int] | None,
    *,
    ptx: bool = False,
    integrated: bool = False,
) -> str | None:
    """One sentence when NVRTC is newer than the driver can take, else None: a newer CUDA major for
    any image, and for PTX (JIT-compiled by the driver) also a newer minor. A newer major names this
    machine's install line (:mod:`crystal_rt.cuda.installs`; ``integrated``: a Jetson); a newer minor
    (the install is right, NVRTC is one release ahead) names the NVRTC pin that matches the driver."""
    from .installs import nvrtc_pin, target_for

    if driver_cuda is None or nvrtc is None:
        return None
    if (nvrtc[:2] if ptx else nvrtc[:1]) <= (driver_cuda[:2] if ptx else driver_cuda[:1]):
        return None
    head = (
        f"NVRTC is CUDA {_fmt(nvrtc)} but the NVIDIA driver supports CUDA {_fmt(driver_cuda)}, so the "
        "kernels it compiles would not load"
    )
    if nvrtc[0] == driver_cuda[0]:
        return f'{head}: pip install "{nvrtc_pin(driver_cuda, integrated=integrated)}", or update the driver'
    target = target_for(driver_cuda, integrated=integrated)
    extra = EXTRA_FOR_MAJOR.get(driver_cuda[0], f"gpu-cu{driver_cuda[0]}")
    line = target.install if target else f'pip install "crystal-rt[{extra}]"'
    return f"{head}: {line} (NVRTC and cuda-python {driver_cuda[0]}.x), or update the driver"
