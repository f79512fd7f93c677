"""GPU backends end to end, in one run: torch eager CUDA vs ONNX Runtime CUDA EP vs ONNX Runtime
TensorRT EP (FP16) vs crystal-rt TensorRT FP16 / INT8 engines, same seeded random weights, real images.

- torch eager CUDA: decode -> CLAHE (CPU) -> tensor to the GPU -> torchvision Mask R-CNN (its own
  transform and full-resolution paste on the GPU) -> scores >= 0.5, masks > 0.5 -> synchronize.
- ORT CUDA EP (FP32) / ORT TensorRT EP (FP16): crystal-rt's ``onnxruntime-cuda`` and
  ``onnxruntime-trt`` engines (``build_engine(..., backend=...)`` then ``Detector.load``): the same
  device pipeline as TensorRT plans, the engine stage on ONNX Runtime through IOBinding.
- crystal-rt TensorRT FP16 / INT8: ``build_engine(..., backend="tensorrt")`` then ``Detector.load``.
  Where this version of crystal-rt cannot build or run TensorRT engines, the column is skipped and
  the reason (crystal-rt's own error message) is recorded.

All available pipelines alternate image by image (ABCD...); medians of the same run; ratios to
torch eager CUDA. Without an NVIDIA GPU nothing is measured: the script says so, writes a JSON
with ``"skipped": true`` and the reason, and exits 0.

    python benchmarks/gpu_backends.py [--runs 5] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import pyplot, save_figure, write_json

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"
THRESHOLD, INPUT_SIZE = 0.5, 512


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REAL)
    p.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args()


def find_gpu() -> tuple[bool, str]:
    """(usable, why): an NVIDIA driver (nvidia-smi) and a CUDA device torch can see."""
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU: nvidia-smi not found"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (needed for the torch eager CUDA baseline)"
    if not torch.cuda.is_available():
        return False, "nvidia-smi found, but torch.cuda.is_available() is False"
    return True, f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"


def main() -> int:
    args = parse_args()
    from crystal_rt.bench.environment import collect_environment

    base: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "arch": args.arch,
        "input_size": INPUT_SIZE,
        "score_threshold": THRESHOLD,
    }
    usable, why = find_gpu()
    if not usable:
        print(f"skipped: {why}; torch CUDA, ORT CUDA EP, ORT TensorRT EP and crystal-rt TensorRT "
              "FP16/INT8 all need an NVIDIA GPU - nothing measured, no plot written")  # fmt: skip
        write_json(args.json, {**base, "skipped": True, "reason": why, "environment": collect_environment()})
        return 0
    report = run(args, base, why)
    write_json(args.json, report)
    if args.plot and report["median_ms"]:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run(args: argparse.Namespace, base: dict[str, Any], gpu: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from crystal_rt.bench.environment import collect_environment, gpu_memory_mb
    from crystal_rt.build.engine import CalibrationOptions, ExportOptions, build_engine
    from crystal_rt.errors import CrystalRtError
    from crystal_rt.io.decode import list_images, read_image
    from crystal_rt.models.maskrcnn import build_maskrcnn, save_checkpoint
    from crystal_rt.runtime.detector import Detector
    from crystal_rt.runtime.preprocess import apply_clahe
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    images = list_images([args.images])
    spec = PreprocessSpec.paper(input_size=INPUT_SIZE)
    model_spec = ModelSpec(arch=args.arch, num_classes=2, max_detections=100, score_threshold=THRESHOLD)
    torch.manual_seed(args.seed)
    model = build_maskrcnn(args.arch, 2, preprocess=spec, max_detections=100)
    skipped: dict[str, str] = {}
    pipelines: dict[str, Callable[[Path], int]] = {}
    closers: list[Callable[[], None]] = []
    tmp = Path(tempfile.mkdtemp(prefix="crystal-rt-gpu-"))
    checkpoint = save_checkpoint(tmp / "model.pt", model, model_spec, spec)
    fp32 = build_engine(checkpoint, tmp / "fp32", export=ExportOptions(validate=False))
    core = tmp / "fp32" / f"{fp32.name}.core.onnx"

    cuda_model = model.to("cuda").eval()

    def torch_cuda(path: Path) -> int:
        pixels = apply_clahe(read_image(path), spec)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to("cuda").permute(2, 0, 1).float().div_(scale)
        with torch.inference_mode():
            out = cuda_model([x])[0]
        keep = out["scores"] >= THRESHOLD
        n = int((out["masks"][keep][:, 0] > 0.5).shape[0])
        torch.cuda.synchronize()
        return n

    pipelines["torch_cuda"] = torch_cuda
    for key, backend, precision in (
        ("ort_cuda_fp32", "onnxruntime-cuda", "fp32"),
        ("ort_tensorrt_fp16", "onnxruntime-trt", "fp16"),
    ):
        try:
            build_engine(core, tmp / key, backend=backend, precision=precision)
            det = Detector.load(tmp / key, score_threshold=THRESHOLD)
        except CrystalRtError as exc:  # a provider that does not load is named, never the CPU
            skipped[key] = str(exc)
            continue
        closers.append(det.close)
        pipelines[key] = lambda path, d=det: len(d.detect(path).instances)
    for precision in ("fp16", "int8"):
        key = f"crystal_rt_tensorrt_{precision}"
        try:
            calib = None
            if precision == "int8":
                from crystal_rt.data.synth_writer import SynthOptions, write_synthetic

                write_synthetic(tmp / "calib", SynthOptions(count=20, seed=1))
                calib = tmp / "calib" / "images"
            build_engine(core, tmp / key, backend="tensorrt", precision=precision, calib=calib,
                         calibration=CalibrationOptions(force=True, num_images=16))  # fmt: skip
            det = Detector.load(tmp / key, score_threshold=THRESHOLD)
        except CrystalRtError as exc:
            skipped[key] = str(exc)
            continue
        closers.append(det.close)
        pipelines[key] = lambda path, d=det: len(d.detect(path).instances)
    for key, reason in skipped.items():
        print(f"{key} skipped: {reason}")

    samples: dict[str, list[float]] = {k: [] for k in pipelines}
    counts: dict[str, dict[str, int]] = {k: {} for k in pipelines}
    for i in range(args.warmup + args.runs):
        for image in images:
            for key, fn in pipelines.items():
                t0 = time.perf_counter()
                counts[key][image.name] = fn(image)
                if i >= args.warmup:
                    samples[key].append((time.perf_counter() - t0) * 1e3)
    for close in closers:
        close()
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    ratios = {k: v / med["torch_cuda"] for k, v in med.items()}
    print(f"\nGPU: {gpu}; {len(images)} images x {args.runs} runs, interleaved; median ms per image")
    for key, value in med.items():
        dets = ", ".join(str(counts[key][im.name]) for im in images)
        print(f"{key:<28} {value:8.1f} ms  {ratios[key]:6.3f}x torch eager CUDA  detections {dets}")
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        **base,
        "skipped": False,
        "gpu": gpu,
        "images": [im.name for im in images],
        "runs": args.runs,
        "warmup": args.warmup,
        "median_ms": med,
        "ratios_vs_torch_cuda": ratios,
        "samples_ms": samples,
        "detections": counts,
        "skipped_pipelines": skipped,
        "torch_max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "process_gpu_memory_mb": gpu_memory_mb(__import__("os").getpid()),
        "environment": {**collect_environment(fp32.to_dict()), "torch": torch.__version__},
    }


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    med = report["median_ms"]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.5 * len(med)))
    ax.barh(list(med), list(med.values()))
    for i, (k, v) in enumerate(med.items()):
        ax.text(v, i, f" {v:.1f} ms ({report['ratios_vs_torch_cuda'][k]:.2f}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.4 * max(med.values()))
    ax.set_xlabel(f"median end-to-end ms per image, {report['gpu']}")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
