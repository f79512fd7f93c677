"""``crystal-rt doctor``: what this machine has and what it can build; ``--gpu`` checks it on the device.

Without ``--gpu`` nothing is built or run: it reports the NVIDIA driver, GPUs and compute
capabilities, the CUDA driver version, TensorRT / TensorRT-RTX, ONNX Runtime and its providers,
cuda-python and NVRTC (against the driver's CUDA), nvcc, ModelOpt, then which engines and kernels
can be built here.

``--gpu`` is the acceptance command of a GPU machine (``build/gpucheck.py``): the CUDA
kernels built for the device, checked against the CPU functions on synthetic drops (and ``--images``),
timed with CUDA events; with TensorRT, the demo engine built FP32 and FP16 (INT8 from ``--int8``),
compared with ONNX Runtime and timed. ``--json`` writes the report. Exit 0 when every check holds,
1 with the failing checks listed, 2 where there is no GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_import
from .options import report_file

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", "ONNX Runtime", extra="cpu")


NO_GPU_EXIT = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="report what this machine has and can build; --gpu checks it", description=__doc__
    )
    p.add_argument(
        "--gpu", action="store_true", help="build and check TensorRT engines and CUDA kernels on the GPU"
    )
    p.add_argument(
        "--images", type=Path, metavar="DIR", help="--gpu: real drop images to check too (up to 8)"
    )
    p.add_argument("--json", type=report_file, metavar="REPORT.json", help="--gpu: write the report here")
    p.add_argument(
        "--runs", type=_positive, default=20, help="--gpu: timed runs per kernel (default 20; engines 5x)"
    )
    p.add_argument(
        "--int8", type=Path, metavar="GRAPH.onnx", help="--gpu: also build and check this Q/DQ INT8 graph"
    )
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _try(fn: Any, default: str = "not found") -> str:
    try:
        value = fn()
    except Exception as exc:  # a report: every probe may fail in its own way, none may stop the others
        return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    return default if value in (None, "", []) else str(value)


def _onnxruntime() -> str | None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None

    return f"{ort.__version__} ({', '.join(ort.get_available_providers())})"


def _gpu_providers() -> str:
    """Which of ONNX Runtime's GPU providers really load (a session is made with each)."""
    from ..runtime.backends.ort_providers import available

    return "; ".join(f"{name}: {'loads' if ok else why}" for name, (ok, why) in available().items())


def _nvrtc() -> str:
    from ..cuda.build import nvrtc_version

    major, minor = nvrtc_version()
    return f"{major}.{minor}"


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    release = next(
        (ln for ln in out.splitlines() if "release" in ln), out.strip().splitlines()[-1] if out else ""
    )
    return f"{path}: {release.strip()}"


def _rtx() -> str | None:
    from ..build.tensorrt.builder import compute_capability_names
    from ..runtime.tensorrt import device
    from ..runtime.tensorrt.modules import TENSORRT_RTX, load_tensorrt

    version = device.tensorrt_version(TENSORRT_RTX)
    if version is None:
        return None
    targets = compute_capability_names(load_tensorrt("doctor", TENSORRT_RTX))
    return f"{version} (ahead-of-time targets: {', '.join(targets)})"


def _modelopt() -> str | None:
    import importlib.util

    from ..runtime.tensorrt.device import package_version

    if importlib.util.find_spec("modelopt") is None:
        return None
    return package_version("nvidia-modelopt") or "installed"


def _kernel_archs() -> str:
    from ..cuda.build import DEFAULT_ARCHS, supported_archs

    have = set(supported_archs())
    return ", ".join(a for a in DEFAULT_ARCHS if a in have) or "none"


def nvrtc_against_driver() -> str | None:
    """None where NVRTC can build kernels this driver loads (or either is missing), else the sentence
    naming the extra to install."""
    from ..cuda.build import nvrtc_version
    from ..cuda.driver import integrated_gpu
    from ..cuda.probe import nvrtc_mismatch, probe

    state = probe()
    if not state.usable:
        return None
    try:
        nvrtc = nvrtc_version()
    except Exception:  # no NVRTC: reported on its own row
        return None
    return nvrtc_mismatch(state.driver_cuda, nvrtc, integrated=integrated_gpu())


def _driver_row() -> str:
    from ..cuda.probe import probe

    state = probe()
    return state.message if state.status != "no_cuda_python" else "not checked (cuda-python is not installed)"


def _install_row() -> str:
    """The install line this machine needs (docs/installs.md's GPU table, from cuda/installs.py)."""
    from ..cuda.driver import integrated_gpu
    from ..cuda.installs import target_for
    from ..cuda.probe import probe

    state = probe()
    if not state.usable:
        return 'no usable NVIDIA GPU: pip install "crystal-rt[cpu]" (ONNX Runtime engines)'
    integrated = integrated_gpu()
    target = target_for(state.driver_cuda, integrated=integrated)
    if target is None:
        kind = "an integrated" if integrated else "a"
        return f"no install line for {kind} GPU with a CUDA {state.driver_cuda} driver (see docs/installs.md)"
    return f"{target.machine}: {target.install}"


def _nvrtc_row() -> str:
    from ..cuda.probe import probe

    if not probe().usable:
        return f"{_nvrtc()} (no usable driver to compare it with)"
    mismatch = nvrtc_against_driver()
    return f"{_nvrtc()}" + (f": {mismatch}" if mismatch else " (the driver loads what it builds)")


def _arithmetic_row() -> str:
    """The OpenCV arithmetic the kernels follow here, and whether the installed cv2 agrees."""
    from ..arith import ENV, flavour_name, opencv_fma
    from ..testing.clahe_reference import opencv_clahe_flavour

    chosen = "fma" if opencv_fma() else "plain"
    found = opencv_clahe_flavour()
    agree = (
        "the installed cv2 computes the same"
        if found == chosen
        else (f"but the installed cv2's CLAHE is {found}: set {ENV} to match it")
    )
    return f"{flavour_name(opencv_fma())}; {agree}"


def machine_rows() -> list[tuple[str, str]]:
    from ..runtime.tensorrt import device

    gpus = _try(lambda: "; ".join(f"{g.index}: {g.name}, compute {g.compute_capability}, "
                                  f"{g.memory_bytes / 2**30:.0f} GiB" for g in device.gpus()))  # fmt: skip
    return [
        ("NVIDIA driver", _try(_driver_row)),
        ("GPU(s)", gpus),
        ("CUDA driver version", _try(device.cuda_driver_version)),
        ("TensorRT", _try(device.tensorrt_version)),
        ("TensorRT-RTX", _try(_rtx)),
        ("ONNX Runtime", _try(_onnxruntime)),
        ("ONNX Runtime GPU providers", _try(_gpu_providers)),
        (
            "cuda-python",
            _try(lambda: device.package_version("cuda-python") or device.package_version("cuda-bindings")),
        ),
        ("NVRTC", _try(_nvrtc_row)),
        ("install for this machine", _try(_install_row)),
        ("OpenCV arithmetic", _try(_arithmetic_row)),
        ("nvcc", _try(_nvcc)),
        ("ModelOpt", _try(_modelopt)),
    ]


def build_rows() -> list[tuple[str, str]]:
    import importlib.util

    from ..runtime.tensorrt import device
    from ..runtime.tensorrt.modules import tensorrt_installed

    ort = importlib.util.find_spec("onnxruntime") is not None
    trt = tensorrt_installed()
    gpu = device.gpu_count() > 0
    if trt and gpu:
        trt_state = "yes (fp16: builder flag or AutoCast graph; int8: Q/DQ graph for tensorrt)"
    else:
        trt_state = "no: needs " + " and ".join(
            n for n, have in (("TensorRT", trt), ("an NVIDIA GPU", gpu)) if not have
        )
    from ..runtime.backends.ort_providers import CUDA_EP, TRT_EP, probe

    rows = [
        ("onnxruntime fp32 / int8", "yes" if ort else 'no: pip install "crystal-rt[cpu]"'),
        ("onnxruntime-trt fp32 / fp16", "yes" if gpu and probe(TRT_EP)[0] else f"no: {probe(TRT_EP)[1]}"),
        (
            "onnxruntime-cuda fp32 (fp16 from AutoCast)",
            "yes" if gpu and probe(CUDA_EP)[0] else f"no: {probe(CUDA_EP)[1]}",
        ),
        ("tensorrt fp32 / fp16 / int8", trt_state),
        ("tensorrt-rtx ahead of time (checks only)", _try(_rtx, default="no: pip install tensorrt-rtx-cu13")),
        ("CUDA kernels (NVRTC CUBIN)", _try(_kernel_archs)),
        ("CUDA kernels run", "yes" if gpu else "no: needs an NVIDIA GPU and driver"),
    ]
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..console import console, err_console, note
    from ..console import shown as escape  # user text and install hints: no markup, one line

    table = Table(title="this machine", show_header=False)
    for key, value in machine_rows():
        table.add_row(key, escape(value))  # values hold "crystal-rt[gpu-cu12]", which is not markup
    console.print(table)
    can = Table(title="what it can build", show_header=False)
    for key, value in build_rows():
        can.add_row(key, escape(value))
    console.print(can)
    if not args.gpu:
        return 0
    import time

    from ..build.gpucheck import Check, load_images, report, run_gpu_checks, synthetic_images
    from ..cuda.probe import probe

    start = time.perf_counter()

    def write_report(checks: list[Check]) -> None:
        """The JSON report, written on every way out of --gpu (a refusal is a report with one FAIL)."""
        if not args.json:
            return
        import json

        from ..io.writers import atomic_write_bytes

        data = report(checks, time.perf_counter() - start)
        atomic_write_bytes(args.json, (json.dumps(data, indent=2) + "\n").encode())
        note(f"wrote {args.json}")

    state = probe()
    if not state.usable:
        err_console.print(
            f"doctor --gpu: {escape(state.message)}; nothing to check", highlight=False, soft_wrap=True
        )
        write_report([Check("NVIDIA GPU", False, state.message)])
        return NO_GPU_EXIT if not state.present else 1
    mismatch = nvrtc_against_driver()
    if mismatch is not None:
        err_console.print(f"doctor --gpu: {escape(mismatch)}", highlight=False, soft_wrap=True)
        write_report([Check("NVRTC against the driver", False, mismatch)])
        return 1
    images = load_images(args.images) + synthetic_images()
    checks = run_gpu_checks(images, note, runs=args.runs, int8_graph=args.int8)
    result = Table(title="GPU checks")
    result.add_column("check")
    result.add_column("result")
    result.add_column("detail")
    for check in checks:
        result.add_row(
            escape(check.name), "[green]pass[/]" if check.ok else "[red]FAIL[/]", escape(check.detail)
        )
    console.print(result)
    write_report(checks)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        err_console.print(
            f"doctor --gpu: {len(failed)} check(s) failed: {escape('; '.join(failed))}", soft_wrap=True
        )
    return 0 if not failed else 1
