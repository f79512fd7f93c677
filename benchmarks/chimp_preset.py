"""CHiMP's own steps (torch eager, CPU) vs crystal-rt ``--preset chimp`` (ONNX Runtime FP32, CPU):
the same checkpoint, the same results, and the time each takes, in the same run.

A seeded CHiMP-architecture checkpoint (``crystal_rt.testing.chimp_replica.seeded_chimp_model``:
maskrcnn_resnet50_fpn, 3 classes) is exported with ``--preset chimp`` and built for ONNX Runtime.
Per image, interleaved (ABAB): the replica of CHiMP's detector (cv2.imread, Resize 1352x1688,
CLAHE 12x12 on L of LAB, min-max, the model with torchvision's transform, scores >= 0.6, masks at
1352x1688, the Echo target) and ``Detector.detect`` (the same steps, the core graph on ONNX Runtime,
masks pasted and scaled the same way, the dispense target). Printed: median ms per image for each,
the ratio, and how the results agree (matched detections, worst box and mask IoU, score difference,
Echo distance).

    python benchmarks/chimp_preset.py [--runs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import write_json

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"
sys.path.insert(0, str(REPO / "tests" / "export"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REAL)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch
    from test_chimp import compare

    from crystal_rt.cli.main import main as cli
    from crystal_rt.io.decode import list_images
    from crystal_rt.runtime.detector import Detector
    from crystal_rt.testing.chimp_replica import chimp_replica, seeded_chimp_model

    images = list_images([args.images])
    model = seeded_chimp_model()
    times: dict[str, list[float]] = {"chimp": [], "crystal_rt": []}
    agreement = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "chimp.pytorch"
        torch.save(model.state_dict(), ckpt)
        cli(["export", str(ckpt), "--preset", "chimp", "-o", f"{tmp}/chimp.onnx", "--no-validate"])
        cli(["build-engine", f"{tmp}/chimp.onnx", "-o", f"{tmp}/engine", "--backend", "onnxruntime"])
        with Detector.load(f"{tmp}/engine") as det:
            for run in range(args.runs + 1):  # the first pass warms both up
                for path in images:
                    t0 = time.perf_counter()
                    reference = chimp_replica(model, str(path))
                    t1 = time.perf_counter()
                    ours = det.detect(path)
                    ours.to_json()
                    t2 = time.perf_counter()
                    if run:
                        times["chimp"].append((t1 - t0) * 1e3)
                        times["crystal_rt"].append((t2 - t1) * 1e3)
                    stats = compare(reference, ours)
                    target = ours.dispense_target
                    if reference.echo and target:
                        stats["echo_px"] = max(
                            abs(target.y - reference.echo[0]), abs(target.x - reference.echo[1])
                        )
                    agreement[path.name] = stats
                    print(
                        f"{path.name}: CHiMP {(t1 - t0) * 1e3:.0f} ms, crystal-rt {(t2 - t1) * 1e3:.0f} ms",
                        flush=True,
                    )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian ms per image over {len(images)} images x {args.runs} runs:")
    print(f"  CHiMP's steps, torch eager    {med['chimp']:8.0f}")
    speedup = med["chimp"] / med["crystal_rt"]
    print(f"  crystal-rt --preset chimp, ORT {med['crystal_rt']:8.0f}  ({speedup:.2f}x faster)")
    for name, s in agreement.items():
        print(
            f"  {name}: matched {s['matched']}/{s['reference']} (ours {s['ours']}), "
            f"min box IoU {s['min_box_iou']:.5f}, min mask IoU {s['min_mask_iou']:.3f}, "
            f"max score diff {s['max_score_diff']:.1e}, Echo within {s.get('echo_px')} px"
        )
    write_json(args.json, {"median_ms": med, "samples_ms": times, "agreement": agreement, "runs": args.runs})


if __name__ == "__main__":
    main()
