"""The paper's experiment on our synthetic drops: the same small Mask R-CNN trained with and
without CLAHE, scored on a held-out set at mask IoU 0.50 and 0.65, beside the paper's numbers.

Both arms see the same images (the default generator: uneven backlight, low contrast on 40 % of
drops, every realism component), the same crops for a given training seed, the same schedule and
the same augmentation; the only difference is the PreprocessSpec's ``clahe`` flag, which training
and inference both apply. Each arm is trained once per seed (``--seeds``, default 3) and reported
as mean +- sd. Training uses the CPU (or a GPU when PyTorch sees one).

    python benchmarks/clahe_ablation.py --json ablation.json

Needs the train extra (torch, torchvision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

KEYS = ("map50", "map65", "coco_segm_ap")
PAPER = {"no_clahe": {"map50": 0.668, "map65": 0.302}, "clahe": {"map50": 0.703, "map65": 0.430}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=200, help="training drops (default 200)")
    p.add_argument("--test", type=int, default=60, help="held-out drops (default 60)")
    p.add_argument("--iterations", type=int, default=400, help="steps per arm (default 400)")
    p.add_argument("--input-size", type=int, default=384, help="engine input size (default 384)")
    p.add_argument("--crop-size", type=int, default=192, help="training crop (default 192)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (default 3)")
    p.add_argument("--components", default="all", help="generator components (default all)")
    p.add_argument("--workdir", type=Path, help="keep datasets and runs here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def arm(args: argparse.Namespace, work: Path, clahe: bool, seed: int) -> dict[str, Any]:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.evaluate.run import evaluate_detector
    from crystal_rt.models.reference import detector_from_checkpoint
    from crystal_rt.train.loop import TrainConfig, train

    name = f"{'clahe' if clahe else 'no_clahe'}-seed{seed}"
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
        seed=seed,
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
    return {"seed": seed, "train_minutes": round(minutes, 2), **{k: data[k] for k in keys}}


def summary(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> int:
    from crystal_rt.data.realism import Components
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic

    args = parse_args()
    work = args.workdir or Path(mkdtemp(prefix="clahe-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", args.train, args.seed + 1), ("test", args.test, args.seed + 1000)):
        if not (work / split / "annotations.json").exists():
            print(f"generating {count} {split} drops (seed {seed}) in {work / split}", flush=True)
            options = SynthOptions(count=count, seed=seed, components=Components.parse(args.components))
            write_synthetic(work / split, options)
    seeds = range(args.seed, args.seed + args.seeds)
    runs = {name: [arm(args, work, name == "clahe", s) for s in seeds] for name in ("no_clahe", "clahe")}
    results = {
        name: {
            "runs": per_seed,
            **{
                f"{stat}_{key}": value
                for key in KEYS
                for stat, value in zip(("mean", "sd"), summary(per_seed, key), strict=True)
            },
        }
        for name, per_seed in runs.items()
    }

    print()
    print(f"mean +- sd over {args.seeds} training seeds per arm")
    print("| metric | paper, no CLAHE | paper, CLAHE | ours, no CLAHE | ours, CLAHE |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, label in (
        ("map50", "mAP@0.50"),
        ("map65", "mAP@0.65"),
        ("coco_segm_ap", "COCO segm AP@[.50:.95]"),
    ):
        paper = [f"{PAPER[a][key]:.3f}" if key in PAPER[a] else "-" for a in ("no_clahe", "clahe")]
        ours = [
            f"{results[a]['mean_' + key]:.3f} ± {results[a]['sd_' + key]:.3f}" for a in ("no_clahe", "clahe")
        ]
        print(f"| {label} | {paper[0]} | {paper[1]} | {ours[0]} | {ours[1]} |")
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "paper": PAPER, "ours": results}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
