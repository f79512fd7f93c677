"""CLAHE timing: crystal-rt's CUDA kernels (device time, CUDA events) vs OpenCV on the CPU vs
cv2.cuda (when this OpenCV build has CUDA), for 8- and 16-bit images of several sizes.

    python benchmarks/clahe_bench.py --runs 20 --json clahe_bench.json

Without a GPU only the OpenCV CPU column is measured (the GPU part is reported as skipped). For
every size the two bounds of the GPU kernels are printed as well: bytes moved (the image read
twice - histograms, then apply - and written once, plus the LUTs written and read once) and the
number of kernel launches; with a known memory bandwidth (the device's, or --bandwidth-gbs) the
implied memory-bound time is bytes / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SIZES: tuple[tuple[int, int], ...] = ((512, 512), (1920, 1080), (2048, 2048), (4096, 3000))  # (width, height)


@dataclass
class Row:
    width: int
    height: int
    bits: int
    bytes_moved: int
    launches: int
    implied_ms: float | None = None
    cv2_cpu_ms: float | None = None
    crystal_rt_gpu_ms: float | None = None
    cv2_cuda_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="timed runs per case; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--clip-limit", type=float, default=2.0)
    p.add_argument("--tiles", type=int, nargs=2, default=(8, 8), metavar=("X", "Y"))
    p.add_argument("--sizes", help="WxH list, e.g. 512x512,1920x1080 (default: the four standard sizes)")
    p.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth for the implied time (GB/s)")
    p.add_argument("--threads", type=int, help="cv2.setNumThreads (default: OpenCV's choice)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def test_image(width: int, height: int, bits: int, seed: int = 0) -> np.ndarray:
    """A smooth drop-like image with noise (CLAHE's cost does not depend much on content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, r = width / 2, height / 2, 0.45 * min(width, height)
    drop = np.clip(1.0 - ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2, 0, 1)
    top = 255 if bits == 8 else 65535
    noise = rng.normal(0.0, 0.03, (height, width)).astype(np.float32)
    img = np.clip((0.2 + 0.5 * drop + noise) * top, 0, top)
    return img.astype(np.uint8 if bits == 8 else np.uint16)


def median_ms(fn: Any, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bounds(width: int, height: int, bits: int, clip: float, tiles: tuple[int, int]) -> tuple[int, int, Any]:
    from crystal_rt.cuda.clahe_plan import ClahePlan

    plan = ClahePlan.for_image(height, width, np.uint8 if bits == 8 else np.uint16, clip, tiles)
    image_bytes = width * height * plan.dtype.itemsize
    moved = 2 * image_bytes + image_bytes + 2 * plan.lut_bytes
    return moved, 2, plan


class GpuClahe:
    """crystal-rt's CLAHE kernels on the current device, timed with CUDA events."""

    def __init__(self) -> None:
        from crystal_rt._lazy import require
        from crystal_rt.cuda import launch

        self.launch = launch
        self.driver = require("cuda.bindings.driver", "GPU benchmark", package="cuda-python", extra="gpu")
        launch.ensure_context(0)
        self.module = launch.Module("clahe")
        self.stream = launch.check(self.driver.cuStreamCreate(0), "cuStreamCreate")
        self.start = launch.check(self.driver.cuEventCreate(0), "cuEventCreate")
        self.stop = launch.check(self.driver.cuEventCreate(0), "cuEventCreate")

    def bandwidth_gbs(self) -> float | None:
        attr = self.driver.CUdevice_attribute
        dev = self.launch.check(self.driver.cuDeviceGet(0), "cuDeviceGet")
        clock_khz = self.launch.check(
            self.driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, dev), "attr"
        )
        bus_bits = self.launch.check(
            self.driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, dev), "attr"
        )
        if not clock_khz or not bus_bits:
            return None
        return 2.0 * clock_khz * 1e3 * (bus_bits / 8) / 1e9  # DDR: two transfers per clock

    def time_ms(self, img: np.ndarray, plan: Any, runs: int, warmup: int) -> float:
        from crystal_rt.cuda.clahe_plan import APPLY_ARGTYPES, HIST_ARGTYPES

        launch, driver = self.launch, self.driver
        src, dst = launch.DeviceBuffer(), launch.DeviceBuffer(img.nbytes)
        scratch, lut = launch.DeviceBuffer(plan.scratch_bytes), launch.DeviceBuffer(plan.lut_bytes)
        src.upload(img, self.stream)
        launch.check(
            driver.cuMemsetD8Async(scratch.ptr, 0, plan.scratch_bytes, self.stream), "cuMemsetD8Async"
        )
        pitch = img.strides[0]
        hist = launch.KernelLaunch(
            plan.hist_kernel,
            plan.hist_grid,
            plan.hist_block,
            plan.hist_args(src.ptr, pitch, scratch.ptr, lut.ptr),
            HIST_ARGTYPES,
            plan.hist_dynamic_smem,
        )
        apply = launch.KernelLaunch(
            plan.apply_kernel,
            plan.apply_grid,
            plan.apply_block,
            plan.apply_args(src.ptr, pitch, dst.ptr, pitch, lut.ptr),
            APPLY_ARGTYPES,
        )
        times = []
        for i in range(warmup + runs):
            launch.check(driver.cuEventRecord(self.start, self.stream), "cuEventRecord")
            self.module.launch(hist, self.stream)
            self.module.launch(apply, self.stream)
            launch.check(driver.cuEventRecord(self.stop, self.stream), "cuEventRecord")
            launch.check(driver.cuEventSynchronize(self.stop), "cuEventSynchronize")
            if i >= warmup:
                times.append(float(launch.check(driver.cuEventElapsedTime(self.start, self.stop), "elapsed")))
        for buf in (src, dst, scratch, lut):
            buf.free()
        return statistics.median(times)


def cv2_cuda_available() -> bool:
    try:
        return bool(cv2.cuda.getCudaEnabledDeviceCount() > 0)
    except (AttributeError, cv2.error):
        return False


def cv2_cuda_ms(img: np.ndarray, clip: float, tiles: tuple[int, int], runs: int, warmup: int) -> float:
    clahe = cv2.cuda.createCLAHE(clipLimit=clip, tileGridSize=tiles)
    stream = cv2.cuda.Stream()
    src = cv2.cuda.GpuMat()
    src.upload(img)
    dst = cv2.cuda.GpuMat(img.shape[0], img.shape[1], src.type())

    def run() -> None:
        clahe.apply(src, stream, dst)
        stream.waitForCompletion()

    return median_ms(run, runs, warmup)


def main() -> int:
    args = parse_args()
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    tiles = (int(args.tiles[0]), int(args.tiles[1]))
    sizes = SIZES
    if args.sizes:
        sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(","))  # type: ignore[misc]

    gpu: GpuClahe | None = None
    gpu_note = ""
    try:
        gpu = GpuClahe()
    except Exception as exc:  # no cuda-python, no driver, no GPU: CPU numbers only
        gpu_note = f"crystal-rt GPU kernels skipped: {exc}"
    bandwidth = args.bandwidth_gbs or (gpu.bandwidth_gbs() if gpu is not None else None)
    has_cv2_cuda = cv2_cuda_available()

    rows: list[Row] = []
    print_header()
    for width, height in sizes:
        for bits in (8, 16):
            img = test_image(width, height, bits)
            moved, launches, plan = bounds(width, height, bits, args.clip_limit, tiles)
            row = Row(width, height, bits, moved, launches)
            if bandwidth:
                row.implied_ms = moved / (bandwidth * 1e9) * 1e3
            clahe = cv2.createCLAHE(clipLimit=args.clip_limit, tileGridSize=tiles)
            row.cv2_cpu_ms = median_ms(lambda c=clahe, i=img: c.apply(i), args.runs, args.warmup)
            if gpu is not None:
                row.crystal_rt_gpu_ms = gpu.time_ms(img, plan, args.runs, args.warmup)
            if has_cv2_cuda:
                try:
                    row.cv2_cuda_ms = cv2_cuda_ms(img, args.clip_limit, tiles, args.runs, args.warmup)
                except cv2.error as exc:  # e.g. 16-bit unsupported by this build
                    row.notes.append(f"cv2.cuda: {str(exc).splitlines()[-1]}")
            rows.append(row)
            print_row(row)

    print()
    if gpu is None:
        print(gpu_note)
    if not has_cv2_cuda:
        print("cv2.cuda skipped: this OpenCV build has no CUDA device support")
    if not bandwidth:
        print("implied time skipped: memory bandwidth unknown (no GPU; pass --bandwidth-gbs)")
    if args.json:
        meta = {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "opencv": cv2.__version__,
            "cv2_threads": cv2.getNumThreads(),
            "runs": args.runs,
            "clip_limit": args.clip_limit,
            "tiles": list(tiles),
            "bandwidth_gbs": bandwidth,
            "gpu": gpu_note or "measured",
            "cv2_cuda": has_cv2_cuda,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _fmt(v: float | None) -> str:
    return f"{v:9.3f}" if v is not None else f"{'-':>9}"


def print_header() -> None:
    print(
        f"{'size':>10} {'bits':>4} {'MB moved':>9} {'launches':>8} {'implied':>9} "
        f"{'cv2 CPU':>9} {'crt GPU':>9} {'cv2.cuda':>9}  (ms, median)"
    )


def print_row(row: Row) -> None:
    print(
        f"{f'{row.width}x{row.height}':>10} {row.bits:>4} {row.bytes_moved / 1e6:9.2f} {row.launches:>8} "
        f"{_fmt(row.implied_ms)} {_fmt(row.cv2_cpu_ms)} {_fmt(row.crystal_rt_gpu_ms)} {_fmt(row.cv2_cuda_ms)}"
        + (f"  {'; '.join(row.notes)}" if row.notes else ""),
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
