"""A CHiMP-style pipeline (what a beamline runs today) vs crystal-rt, same random weights, same images.

CHiMP-style, torch on the CPU, eager: decode (cv2) -> CLAHE with 12x12 tiles (cv2; gray directly,
RGB on the L channel of LAB) -> resize to 1688x1352 (W x H, cv2 INTER_LINEAR) -> torchvision Mask
R-CNN eager with its default transform (min_size 800, max_size 1333: the network sees ~800x1000)
and its own full-resolution mask paste -> scores >= 0.5, masks > 0.5.

crystal-rt: the same weights exported to the core ONNX at S=512 and built for ONNX Runtime FP32;
``Detector.detect`` (decode, CLAHE 8x8, letterbox, engine, paste at the original size) + JSON encode.

The two differ in input resolution by design (that is the comparison: today's pipeline vs
crystal-rt's), so the ratio mixes the runtime's gain with the smaller network input. Weights are a
seeded random maskrcnn_resnet50_fpn, so detections are random too (their counts are printed: the
paste cost depends on them). Interleaved image by image (ABAB); medians of the same run.

    python benchmarks/chimp_pipeline.py [--runs 3] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import copy
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
CHIMP_SIZE = (1688, 1352)  # (width, height) for cv2.resize
CHIMP_TILES = (12, 12)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REAL)
    p.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args()


def make_chimp(model: Any) -> Any:
    """CHiMP-style run: returns (detections, stage ms)."""
    import cv2
    import numpy as np
    import torch

    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=CHIMP_TILES)

    def run(path: Path) -> tuple[int, dict[str, float]]:
        t0 = time.perf_counter()
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        t2 = time.perf_counter()
        rgb = cv2.resize(rgb, CHIMP_SIZE, interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        t3 = time.perf_counter()
        with torch.inference_mode():
            out = model([x])[0]
        t4 = time.perf_counter()
        keep = out["scores"] >= THRESHOLD
        masks = out["masks"][keep][:, 0] > 0.5
        t5 = time.perf_counter()
        ms = {
            "decode": t1 - t0,
            "clahe": t2 - t1,
            "resize": t3 - t2,
            "model+paste": t4 - t3,
            "select": t5 - t4,
        }
        return int(masks.shape[0]), {k: v * 1e3 for k, v in ms.items()}

    return run


def main() -> int:
    args = parse_args()
    import torch

    from crystal_rt.bench.environment import collect_environment
    from crystal_rt.build.engine import ExportOptions, build_engine
    from crystal_rt.io.decode import list_images
    from crystal_rt.models.maskrcnn import build_maskrcnn, save_checkpoint
    from crystal_rt.runtime.detector import Detector
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    images = list_images([args.images])
    spec = PreprocessSpec.paper(input_size=INPUT_SIZE)
    model_spec = ModelSpec(arch=args.arch, num_classes=2, max_detections=100, score_threshold=THRESHOLD)
    torch.manual_seed(args.seed)
    model = build_maskrcnn(args.arch, 2, preprocess=spec, max_detections=100)
    chimp_model = copy.deepcopy(model)
    chimp_model.transform.min_size = (800,)  # torchvision's defaults
    chimp_model.transform.max_size = 1333
    chimp = make_chimp(chimp_model)

    samples: dict[str, list[float]] = {"chimp": [], "crystal_rt": []}
    stages: dict[str, dict[str, list[float]]] = {"chimp": {}, "crystal_rt": {}}
    counts: dict[str, dict[str, int]] = {"chimp": {}, "crystal_rt": {}}
    with tempfile.TemporaryDirectory(prefix="crystal-rt-chimp-") as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "model.pt", model, model_spec, spec)
        build_engine(checkpoint, Path(tmp) / "engine", export=ExportOptions(validate=False))
        with Detector.load(Path(tmp) / "engine", score_threshold=THRESHOLD) as det:
            for i in range(args.warmup + args.runs):
                for image in images:
                    t = time.perf_counter()
                    n, st = chimp(image)
                    ms_chimp = (time.perf_counter() - t) * 1e3
                    counts["chimp"][image.name] = n
                    t = time.perf_counter()
                    result = det.detect(image)
                    t1 = time.perf_counter()
                    result.to_json()
                    ms_crt = (time.perf_counter() - t) * 1e3
                    counts["crystal_rt"][image.name] = len(result.instances)
                    if i < args.warmup:
                        continue
                    samples["chimp"].append(ms_chimp)
                    samples["crystal_rt"].append(ms_crt)
                    result.timings_ms["encode"] = (time.perf_counter() - t1) * 1e3
                    for key, d in (("chimp", st), ("crystal_rt", result.timings_ms)):
                        for s, v in d.items():
                            stages[key].setdefault(s, []).append(v)
                    print(
                        f"{image.name}: CHiMP-style {ms_chimp:.0f} ms, crystal-rt {ms_crt:.0f} ms", flush=True
                    )

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["crystal_rt"] / med["chimp"]
    print(f"\n{len(images)} images x {args.runs} runs, interleaved; median ms per image")
    for key, label in (("chimp", "CHiMP-style torch eager"), ("crystal_rt", "crystal-rt ORT FP32")):
        st = ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in stages[key].items())
        dets = ", ".join(str(counts[key][im.name]) for im in images)
        print(f"{label:<24} {med[key]:8.1f} ms  (min {min(samples[key]):.1f}, max {max(samples[key]):.1f}); "
              f"detections {dets}; stages: {st}")  # fmt: skip
    print(f"crystal-rt / CHiMP-style = {ratio:.3f}x ({1 / ratio:.1f}x faster)")
    env = collect_environment()
    env["torch"], env["torch_threads"] = torch.__version__, torch.get_num_threads()
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": sys.argv,
        "arch": args.arch, "seed": args.seed, "images": [im.name for im in images], "runs": args.runs,
        "chimp": {"resize_wh": list(CHIMP_SIZE), "clahe_tiles": list(CHIMP_TILES), "min_size": 800,
                  "max_size": 1333},
        "crystal_rt": {"input_size": INPUT_SIZE, "backend": "onnxruntime fp32"},
        "median_ms": med, "ratio": ratio, "samples_ms": samples,
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

    fig, ax = plt.subplots(figsize=(7, 2.6))
    labels = {"chimp": "CHiMP-style torch eager", "crystal_rt": "crystal-rt ORT FP32"}
    for i, key in enumerate(("chimp", "crystal_rt")):
        left = 0.0
        for s, v in report["stage_medians_ms"][key].items():
            if s == "total":
                continue
            new = key == "chimp" or s not in report["stage_medians_ms"]["chimp"]
            ax.barh(i, v, left=left, label=s if new else None)
            left += v
    ax.set_yticks([0, 1], [labels["chimp"], labels["crystal_rt"]])
    ax.invert_yaxis()
    ax.set_xlabel(f"median ms per image (stages); crystal-rt / CHiMP-style = {report['ratio']:.3f}x")
    ax.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
