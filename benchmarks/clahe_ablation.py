"""The paper's experiment on our synthetic drops: the same small Mask R-CNN trained with and
without CLAHE, scored on a held-out set at mask IoU 0.50 and 0.65, beside the paper's numbers.

Both arms see the same images, the same crops (same seed), the same schedule and the same
augmentation; the only difference is the PreprocessSpec's ``clahe`` flag, which training and
inference both apply. Training uses the CPU (or a GPU when PyTorch sees one).

    python benchmarks/clahe_ablation.py --json ablation.json

Needs the train extra (torch, torchvision).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

PAPER = {"no_clahe": {"map50": 0.668, "map65": 0.302}, "clahe": {"map50": 0.703, "map65": 0.430}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=200, help="training drops (default 200)")
    p.add_argument("--test", type=int, default=60, help="held-out drops (default 60)")
    p.add_argument("--iterations", type=int, default=400, help="steps per arm (default 400)")
    p.add_argument("--input-size", type=int, default=384, help="engine input size (default 384)")
    p.add_argument("--crop-size", type=int, default=192, help="training crop (default 192)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="keep datasets and runs here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def arm(args: argparse.Namespace, work: Path, clahe: bool) -> dict[str, Any]:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.evaluate.run import evaluate_detector
    from crystal_rt.models.reference import detector_from_checkpoint
    from crystal_rt.train.loop import TrainConfig, train

    name = "clahe" if clahe else "no_clahe"
    config = TrainConfig(
        data=str(work / "train" / "annotations.json"),
        images=None,
        output=str(work / name),
        val_fraction=0.0,
        input_size=args.input_size,
        clahe=clahe,
        slim=True,
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        val_every=args.iterations,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    result = train(config)
    minutes = (time.perf_counter() - t0) / 60
    test = load_coco(work / "test" / "annotations.json")
    with detector_from_checkpoint(result.last) as detector:
        report, _ = evaluate_detector(detector, test)
    data = report.to_dict()
    print(
        f"{name}: trained {args.iterations} steps in {minutes:.1f} min; "
        f"mAP@0.50 {data['map50']:.3f}, mAP@0.65 {data['map65']:.3f}, "
        f"COCO segm AP {data['coco_segm_ap']:.3f}",
        flush=True,
    )
    keys = ("map50", "map65", "coco_segm_ap", "coco_bbox_ap", "precision", "recall")
    return {"train_minutes": round(minutes, 2), **{k: data[k] for k in keys}}


def main() -> int:
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic

    args = parse_args()
    work = args.workdir or Path(mkdtemp(prefix="clahe-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", args.train, args.seed + 1), ("test", args.test, args.seed + 1000)):
        if not (work / split / "annotations.json").exists():
            print(f"generating {count} {split} drops (seed {seed}) in {work / split}", flush=True)
            write_synthetic(work / split, SynthOptions(count=count, seed=seed))
    results = {name: arm(args, work, name == "clahe") for name in ("no_clahe", "clahe")}

    print()
    print("| metric | paper, no CLAHE | paper, CLAHE | ours, no CLAHE | ours, CLAHE |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, label in (("map50", "mAP@0.50"), ("map65", "mAP@0.65")):
        ours = [results[a][key] for a in ("no_clahe", "clahe")]
        print(
            f"| {label} | {PAPER['no_clahe'][key]:.3f} | {PAPER['clahe'][key]:.3f} | "
            f"{ours[0]:.3f} | {ours[1]:.3f} |"
        )
    ours = [results[a]["coco_segm_ap"] for a in ("no_clahe", "clahe")]
    print(f"| COCO segm AP@[.50:.95] | - | - | {ours[0]:.3f} | {ours[1]:.3f} |")
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "paper": PAPER, "ours": results}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
