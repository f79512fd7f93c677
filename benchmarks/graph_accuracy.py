"""Several core ONNX graphs (FP32, INT8, FP16, ...) on one COCO set, in one run: accuracy and speed.

Each graph runs on ONNX Runtime's CPU through ``Detector.from_onnx`` and is scored like
``crystal-rt evaluate`` (mAP@0.50/0.65 as the paper computes them, COCO segm AP, precision and
recall at the model's threshold), with the median engine time per image.

    python benchmarks/graph_accuracy.py crystals.onnx crystals.int8.onnx --data val/annotations.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graphs", nargs="+", type=Path, help="core ONNX graphs (crystal-rt export / calibrate)")
    p.add_argument("--data", type=Path, required=True, help="COCO JSON with ground truth")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()

    from crystal_rt.data.coco import load_coco
    from crystal_rt.evaluate.run import evaluate_detector
    from crystal_rt.runtime.detector import Detector

    dataset = load_coco(args.data)
    rows = []
    print(f"{'graph':<40} {'mAP@.50':>8} {'mAP@.65':>8} {'segm AP':>8} {'engine ms':>10}")
    for graph in args.graphs:
        with Detector.from_onnx(graph) as detector:
            report, results = evaluate_detector(detector, dataset)
        engine_ms = statistics.median(r.timings_ms["engine"] for r in results)
        rows.append({"graph": str(graph), **report.to_dict(), "engine_ms_median": engine_ms})
        print(
            f"{graph.name:<40} {report.map50:8.4f} {report.map65:8.4f} {report.coco_segm_ap:8.4f} "
            f"{engine_ms:10.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
