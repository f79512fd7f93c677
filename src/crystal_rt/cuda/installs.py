"""The install line for each GPU target, in one place: docs/installs.md's GPU table is checked against
:data:`TARGETS` (tests/test_docs_examples.py), ``crystal-rt doctor`` names the line this machine needs,
and the driver/NVRTC mismatch message (:func:`crystal_rt.cuda.probe.nvrtc_mismatch`) advises from it.

A Jetson (an integrated GPU on aarch64) takes the ``cuda-cu*`` extra that matches its JetPack's CUDA
major: TensorRT comes with JetPack, and PyPI has no aarch64 onnxruntime-gpu. JetPack 6 is CUDA 12.6, so
the ``gpu``/``gpu-cu13`` extras (cuda-python 13, NVRTC 13) cannot run there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    key: str
    machine: str
    cuda: str
    install: str
    #: NVRTC's pip package for this CUDA major (its version must not be newer than the driver's CUDA)
    nvrtc_package: str


TARGETS: tuple[Target, ...] = (
    Target(
        "jetpack6",
        "Jetson Orin, JetPack 6.x (TensorRT 10.3 from JetPack)",
        "12.6",
        'pip install "crystal-rt[cuda-cu12]"',
        "nvidia-cuda-nvrtc-cu12",
    ),
    Target(
        "jetpack7",
        "Jetson Orin / Thor, JetPack 7.x (TensorRT 11 from JetPack)",
        "13.x",
        'pip install "crystal-rt[cuda-cu13]"',
        "nvidia-cuda-nvrtc",
    ),
    Target(
        "x86-cu12",
        "GPU PC, CUDA 12 driver",
        "12.x",
        'pip install "crystal-rt[gpu-cu12]" tensorrt-cu12',
        "nvidia-cuda-nvrtc-cu12",
    ),
    Target(
        "x86-cu13",
        "GPU PC, CUDA 13 driver (R580 and newer)",
        "13.x",
        'pip install "crystal-rt[gpu-cu13]" tensorrt-cu13',
        "nvidia-cuda-nvrtc",
    ),
)


def target_for(driver_cuda: tuple[int, int] | None, *, integrated: bool) -> Target | None:
    """The target of a machine whose driver supports CUDA ``driver_cuda`` (None: unknown, or a CUDA
    major crystal-rt has no install for); ``integrated``: a Jetson's GPU."""
    if driver_cuda is None:
        return None
    major = driver_cuda[0]
    key = {(True, 12): "jetpack6", (True, 13): "jetpack7", (False, 12): "x86-cu12", (False, 13): "x86-cu13"}
    found = key.get((integrated, major))
    return next((t for t in TARGETS if t.key == found), None)


def nvrtc_pin(driver_cuda: tuple[int, int], *, integrated: bool = False) -> str:
    """The pip requirement of an NVRTC no newer than the driver (``nvidia-cuda-nvrtc==13.0.*``)."""
    target = target_for(driver_cuda, integrated=integrated)
    package = target.nvrtc_package if target else f"nvidia-cuda-nvrtc-cu{driver_cuda[0]}"
    return f"{package}=={driver_cuda[0]}.{driver_cuda[1]}.*"
