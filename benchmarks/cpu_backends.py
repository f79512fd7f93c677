"""CPU backends end to end, in one run: torchvision eager vs crystal-rt ONNX Runtime FP32 vs INT8.

One seeded random Mask R-CNN (default maskrcnn_resnet50_fpn, 2 classes, S=512) is built in this
run, exported to the core ONNX and built into an ORT FP32 engine; the INT8 engine is calibrated in
the same run (ONNX Runtime static QDQ) on synthetic drops. The weights are random, so the accuracy
gate of ``calibrate`` is forced (the mAP of a random model means nothing); what is compared is time.

- torchvision eager: decode -> CLAHE -> its own GeneralizedRCNNTransform (resize + normalise) ->
  model -> its own mask paste at full resolution -> scores >= 0.5, masks > 0.5 (as
  ``cpu_end_to_end.py``).
- crystal-rt FP32 / INT8: ``Detector.detect`` (decode, CLAHE, letterbox, engine, paste), then the
  result encoded to JSON.

Every run goes over the real images, each image through the three pipelines in turn (ABCABC...);
medians of the same run, ratios to torchvision. Targets: FP32 <= 0.40x, INT8 <= 0.25x torchvision
eager. Reports, never asserts.

    python benchmarks/cpu_backends.py [--runs 3] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import pyplot, save_figure, write_json

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"
THRESHOLD, INPUT_SIZE = 0.5, 512
TARGETS = {"crystal_rt_fp32": 0.40, "crystal_rt_int8": 0.25}
NAMES = {"torchvision": "torchvision eager", "crystal_rt_fp32": "crystal-rt ORT FP32",
         "crystal_rt_int8": "crystal-rt ORT INT8"}  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REAL, help="image file or folder (default tests/data/real)")
    p.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    p.add_argument("--runs", type=int, default=3, help="timed passes over the images (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--calib-images", type=int, default=16, help="synthetic calibration drops (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch

    from cpu_end_to_end import make_torchvision
    from crystal_rt.bench.environment import collect_environment
    from crystal_rt.build.engine import ExportOptions, build_engine
    from crystal_rt.calibration.api import calibrate
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.io.decode import list_images
    from crystal_rt.models.maskrcnn import build_maskrcnn, save_checkpoint
    from crystal_rt.runtime.detector import Detector
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    images = list_images([args.images])
    if not images:
        print(f"no images in {args.images}", file=sys.stderr)
        return 2
    spec = PreprocessSpec.paper(input_size=INPUT_SIZE)
    model_spec = ModelSpec(arch=args.arch, num_classes=2, max_detections=100, score_threshold=THRESHOLD)
    torch.manual_seed(args.seed)
    model = build_maskrcnn(args.arch, 2, preprocess=spec, max_detections=100)

    with tempfile.TemporaryDirectory(prefix="crystal-rt-cpu-backends-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        checkpoint = save_checkpoint(work / "model.pt", model, model_spec, spec)
        fp32 = build_engine(checkpoint, work / "fp32", export=ExportOptions(validate=False))
        build_s = time.perf_counter() - t0
        print(f"exported + built FP32 in {build_s:.1f} s")
        write_synthetic(work / "calib", SynthOptions(count=args.calib_images + 4, seed=1))
        t0 = time.perf_counter()
        calibrated = calibrate(
            fp32.engine_path.parent / f"{fp32.name}.core.onnx",
            work / "calib" / "images",
            work / "model.int8.onnx",
            num_images=args.calib_images,
            held_out=4,  # the 4 extra drops: FP32 vs INT8 agreement, reported only
            force=True,
        )
        build_engine(calibrated.output, work / "int8", precision="int8")
        calib_s = time.perf_counter() - t0
        print(f"calibrated + built INT8 in {calib_s:.1f} s ({calibrated.info.method})")

        det32 = Detector.load(work / "fp32", score_threshold=THRESHOLD)
        det8 = Detector.load(work / "int8", score_threshold=THRESHOLD)
        samples: dict[str, list[float]] = {k: [] for k in NAMES}
        stages: dict[str, dict[str, list[float]]] = {"crystal_rt_fp32": {}, "crystal_rt_int8": {}}
        counts: dict[str, dict[str, int]] = {k: {} for k in NAMES}
        tv_runs = {im: make_torchvision(model, spec, im) for im in images}

        def crt(det: Any, key: str, image: Path, timed: bool) -> int:
            result = det.detect(image)
            t = time.perf_counter()
            result.to_json()
            if timed:
                result.timings_ms["encode"] = (time.perf_counter() - t) * 1e3
                for stage, ms in result.timings_ms.items():
                    stages[key].setdefault(stage, []).append(ms)
            return len(result.instances)

        for i in range(args.warmup + args.runs):
            timed = i >= args.warmup
            for image in images:
                for key in NAMES:
                    t = time.perf_counter()
                    if key == "torchvision":
                        n = tv_runs[image]()
                    else:
                        n = crt(det32 if key == "crystal_rt_fp32" else det8, key, image, timed)
                    ms = (time.perf_counter() - t) * 1e3
                    counts[key][image.name] = n
                    if timed:
                        samples[key].append(ms)
            if timed:
                last = {k: v[-len(images) :] for k, v in samples.items()}
                print(f"run {i - args.warmup + 1}/{args.runs}: " + ", ".join(
                    f"{NAMES[k]} {statistics.median(v):.0f} ms" for k, v in last.items()))  # fmt: skip
        det32.close()
        det8.close()

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {k: med[k] / med["torchvision"] for k in TARGETS}
    print(f"\n{len(images)} images x {args.runs} runs, interleaved; median ms per image (end to end)")
    print(f"{'pipeline':<22} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}  detections per image")
    for k, v in samples.items():
        ratio = med[k] / med["torchvision"]
        dets = ", ".join(str(counts[k][im.name]) for im in images)
        print(f"{NAMES[k]:<22} {med[k]:8.1f} {min(v):8.1f} {max(v):8.1f} {ratio:7.3f}  {dets}")
    for key in ("crystal_rt_fp32", "crystal_rt_int8"):
        st = ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in stages[key].items())
        print(f"{NAMES[key]} stage medians (ms): {st}")
    for k, target in TARGETS.items():
        verdict = "meets" if ratios[k] <= target else f"misses by {ratios[k] / target:.2f}x"
        print(f"{NAMES[k]} / torchvision eager = {ratios[k]:.3f}x (target <= {target:.2f}x: {verdict})")
    env = collect_environment()
    env["torch"], env["torch_threads"] = torch.__version__, torch.get_num_threads()
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "arch": args.arch, "input_size": INPUT_SIZE, "score_threshold": THRESHOLD, "seed": args.seed,
        "images": [im.name for im in images], "runs": args.runs, "warmup": args.warmup,
        "build_s": build_s, "calibration_s": calib_s, "calibration": calibrated.info.method,
        "median_ms": med, "samples_ms": samples, "ratios_vs_torchvision": ratios, "targets": TARGETS,
        "stage_medians_ms": {k: {s: statistics.median(v) for s, v in d.items()} for k, d in stages.items()},
        "detections": counts, "environment": env,
    }  # fmt: skip
    write_json(args.json, report)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 3))
    keys = list(NAMES)
    ax.barh([NAMES[k] for k in keys], [report["median_ms"][k] for k in keys],
            color=["tab:gray", "tab:blue", "tab:green"])  # fmt: skip
    for i, k in enumerate(keys):
        ratio = report["median_ms"][k] / report["median_ms"]["torchvision"]
        ax.text(report["median_ms"][k], i, f" {report['median_ms'][k]:.0f} ms ({ratio:.2f}x)", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("median end-to-end ms per image (real images)")
    ax.set_xlim(0, 1.35 * max(report["median_ms"].values()))
    ax.set_title(f"{report['arch']}, S={report['input_size']}, {report['environment']['cpu']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
