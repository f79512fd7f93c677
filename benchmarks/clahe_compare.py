"""CLAHE, 8-bit gray, clip 2.0, 8x8 tiles: OpenCV on the CPU vs crystal-rt's CUDA kernels (when a
GPU is present) vs kornia's ``kornia.enhance.equalize_clahe`` (CPU torch), at 512x512, 1920x1080
and 2048x2048, interleaved run by run (cv2, kornia, [GPU], cv2, kornia, ...) in one process.

kornia works on float tensors in [0, 1] and is not bit-exact with OpenCV: its time includes the
uint8 -> float -> uint8 conversions (what a pipeline needs to get the same image type back), and its
largest absolute difference from cv2 (in 8-bit levels) is reported. The crystal-rt kernels are
bit-exact with cv2 (tests/cuda_emu); their time is device time (CUDA events) on a resident image.

    python benchmarks/clahe_compare.py [--runs 10] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import pyplot, save_figure, write_json

SIZES = ((512, 512), (1920, 1080), (2048, 2048))  # (width, height)
CLIP, TILES = 2.0, (8, 8)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import cv2
    import numpy as np

    from clahe_bench import GpuClahe, bounds, test_image
    from crystal_rt.bench.environment import collect_environment

    try:
        import kornia
        import torch
    except ImportError as exc:
        kornia = None
        kornia_note = f"kornia skipped: not installed ({exc.name}); pip install kornia"
    else:
        kornia_note = (
            f"kornia {kornia.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
    gpu: Any = None
    try:
        gpu = GpuClahe()
        gpu_note = "crystal-rt GPU kernels: measured (CUDA events, device time)"
    except Exception as exc:  # no cuda-python, no driver, no GPU
        gpu_note = f"crystal-rt GPU kernels skipped: no usable GPU ({str(exc).splitlines()[0][:160]})"
    print(kornia_note)
    print(gpu_note)
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")

    clahe = cv2.createCLAHE(clipLimit=CLIP, tileGridSize=TILES)
    rows = []
    for width, height in SIZES:
        img = test_image(width, height, 8)
        ref = clahe.apply(img)
        fns: dict[str, Any] = {"cv2_cpu": lambda i=img: clahe.apply(i)}
        max_diff = None
        if kornia is not None:

            def kornia_run(i: Any = img) -> Any:
                x = torch.from_numpy(i).to(torch.float32).div_(255.0)[None, None]
                y = kornia.enhance.equalize_clahe(x, clip_limit=CLIP, grid_size=TILES)
                return y[0, 0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()

            fns["kornia_cpu"] = kornia_run
            out = kornia_run()
            max_diff = int(np.abs(out.astype(np.int16) - ref.astype(np.int16)).max())
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(args.warmup + args.runs):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[key].append((time.perf_counter() - t0) * 1e3)
        row: dict[str, Any] = {"width": width, "height": height, "bits": 8}
        row.update({f"{k}_ms": statistics.median(v) for k, v in times.items()})
        row["samples_ms"] = times
        row["kornia_max_abs_diff_vs_cv2"] = max_diff
        if gpu is not None:
            _, _, plan = bounds(width, height, 8, CLIP, TILES)
            row["crystal_rt_gpu_ms"] = gpu.time_ms(img, plan, args.runs, args.warmup)
        rows.append(row)
        ratio = f", kornia/cv2 {row['kornia_cpu_ms'] / row['cv2_cpu_ms']:.1f}x" if kornia else ""
        diff = f", kornia max |diff| vs cv2 {max_diff} levels" if kornia else ""
        gpu_txt = f", crystal-rt GPU {row['crystal_rt_gpu_ms']:.3f} ms" if gpu is not None else ""
        kornia_txt = f", kornia CPU {row['kornia_cpu_ms']:.2f} ms" if kornia else ""
        print(f"{width}x{height}: cv2 CPU {row['cv2_cpu_ms']:.2f} ms{kornia_txt}{gpu_txt}{ratio}{diff}",
              flush=True)  # fmt: skip
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "runs": args.runs, "warmup": args.warmup, "clip_limit": CLIP,
        "tiles": list(TILES), "kornia": kornia_note, "gpu": gpu_note, "opencv_threads": cv2.getNumThreads(),
        "rows": rows, "environment": collect_environment(),
    }  # fmt: skip
    write_json(args.json, report)
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    import numpy as np

    keys = [k for k in ("cv2_cpu_ms", "kornia_cpu_ms", "crystal_rt_gpu_ms") if k in rows[0]]
    labels = {
        "cv2_cpu_ms": "cv2 CPU",
        "kornia_cpu_ms": "kornia CPU (torch)",
        "crystal_rt_gpu_ms": "crystal-rt GPU",
    }
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    w = 0.8 / len(keys)
    for j, k in enumerate(keys):
        ax.bar(x + j * w, [r[k] for r in rows], w, label=labels[k])
    ax.set_xticks(x + w * (len(keys) - 1) / 2, [f"{r['width']}x{r['height']}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title("CLAHE 8-bit, clip 2.0, 8x8 tiles", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
