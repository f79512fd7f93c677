"""The few-shot recipe on a kind of drop the shipped model was not trained on, before and after.

The new kind: drops imaged the other way round (bright crystals on a dark field, as UV
fluorescence imagers show them): the synthetic generator's gray drops, inverted. The shipped
model is scored on a held-out set of them, fine-tuned with

    crystal-rt train --recipe finetune --init crystals.onnx --data FEW.json --max-minutes M

on a handful of annotated ones, and the result (RUN/best.pt, as build-engine takes it) scored on
the same held-out set. Writes benchmarks/results/finetune_demo.json (and prints a table).

    python scripts/finetune_demo.py [--train 8] [--test 30] [--max-minutes 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("map50", "map65", "coco_segm_ap", "precision", "recall")


def crt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "crystal_rt.cli.main", *args], check=True)


def inverted_set(folder: Path, count: int, seed: int, size: str) -> Path:
    crt("synth", "-n", str(count), "-o", str(folder), "--seed", str(seed), "--size", size,
        "--colour", "gray", "--bit-depth", "8")  # fmt: skip
    for path in glob.glob(str(folder / "images" / "*.png")):
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        cv2.imwrite(path, 255 - image)
    return folder / "annotations.json"


def scores(model: str, data: Path, out: Path) -> dict[str, float]:
    crt("evaluate", model, "--data", str(data), "--json", str(out))
    report = json.loads(out.read_text())
    return {k: report[k] for k in KEYS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=8, help="annotated drops to fine-tune on (8)")
    p.add_argument("--test", type=int, default=30, help="held-out drops to score on (30)")
    p.add_argument("--size", default="1024x768")
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune_demo.json")
    args = p.parse_args()

    from crystal_rt.assets import demo_model

    work = args.work or Path(tempfile.mkdtemp(prefix="crystal-rt-finetune-"))
    few = inverted_set(work / "few", args.train, 101, args.size)
    test = inverted_set(work / "test", args.test, 202, args.size)
    before = scores(str(demo_model()), test, work / "before.json")
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    crt("train", "--recipe", "finetune", "--init", str(demo_model()), "--data", str(few),
        "--max-minutes", str(args.max_minutes), "-o", str(run))  # fmt: skip
    minutes = (time.perf_counter() - t0) / 60
    after = scores(str(run / "best.pt"), test, work / "after.json")
    result = {
        "new_kind": "gray synthetic drops, inverted (bright crystals on a dark field)",
        "train_images": args.train,
        "test_images": args.test,
        "size": args.size,
        "max_minutes": args.max_minutes,
        "train_minutes": round(minutes, 2),
        "before": before,
        "after": after,
        "command": "crystal-rt train --recipe finetune --init crystals.onnx --data few/annotations.json",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':8}" + "".join(f"{k:>14}" for k in KEYS))
    for name, values in (("before", before), ("after", after)):
        print(f"{name:8}" + "".join(f"{values[k]:>14.3f}" for k in KEYS))
    print(f"fine-tuning took {minutes:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
