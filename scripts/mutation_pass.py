"""A hand-made mutation pass over the modules every reported number passes through (not run by CI).

Each mutant is one textual change to a source file; the script applies it, runs the test files
that cover the module (with the tests as they are now, and with the tests of an older commit for
comparison), records killed (some test failed) or survived, and restores the file.

    PYTHONPATH=src python scripts/mutation_pass.py [--before REV] [--only PREFIX]

Results are listed in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "crystal_rt"

EVALUATE = ["tests/evaluate/test_metrics.py", "tests/evaluate/test_truth_reference.py"]
POST = ["tests/runtime/test_postprocess.py", "tests/test_docs_numbers.py"]
PRE = ["tests/runtime/test_preprocess.py", "tests/test_docs_numbers.py"]
DECODE = ["tests/io/test_decode.py", "tests/test_docs_numbers.py"]
RLE = ["tests/io/test_rle.py", "tests/data/test_coco.py", "tests/evaluate/test_truth_reference.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under src/crystal_rt
    old: str
    new: str
    tests: list[str]


MUTANTS = [
    Mutant(
        "E1 match: IoU < t -> <= t",
        "evaluate/matching.py",
        "if row[j] < iou_threshold:",
        "if row[j] <= iou_threshold:",
        EVALUATE,
    ),
    Mutant(
        "E2 match: a truth matched twice",
        "evaluate/matching.py",
        "if taken[j] or pred_labels[i]",
        "if pred_labels[i]",
        EVALUATE,
    ),
    Mutant(
        "E3 IoU: union without - inter",
        "evaluate/matching.py",
        "union = area_a[i] + area_b[j] - inter",
        "union = area_a[i] + area_b[j]",
        EVALUATE,
    ),
    Mutant(
        "E4 match: predictions by increasing score",
        "evaluate/matching.py",
        "key=lambda k: -result.instances[k].score",
        "key=lambda k: result.instances[k].score",
        EVALUATE,
    ),
    Mutant(
        "E5 AP: no precision envelope",
        "evaluate/ap.py",
        "precisions = np.maximum.accumulate(precisions[::-1])[::-1]",
        "precisions = precisions",
        EVALUATE,
    ),
    Mutant(
        "E6 AP: recall over num_truth + 1",
        "evaluate/ap.py",
        "hits / num_truth, [1.0]",
        "hits / (num_truth + 1), [1.0]",
        EVALUATE,
    ),
    Mutant(
        "E7 operating point: score > t",
        "evaluate/ap.py",
        "keep = m.scores >= score_threshold",
        "keep = m.scores > score_threshold",
        EVALUATE,
    ),
    Mutant(
        "E8 truth: crop mirrored",
        "evaluate/truth.py",
        "crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool)",
        "crop = np.ascontiguousarray(mask[y0:y1, x0:x1][:, ::-1], dtype=bool)",
        EVALUATE,
    ),
    Mutant(
        "E9 score_detector: truth mirrored",
        "evaluate/run.py",
        "masks, labels, crowd = dataset.masks(image_id)\n",
        "masks, labels, crowd = dataset.masks(image_id)\n        masks = masks[:, :, ::-1]\n",
        EVALUATE,
    ),
    Mutant(
        "P1 select: padding (score 0) kept",
        "runtime/postprocess.py",
        "(scores > 0.0) & (scores >= score_threshold)",
        "(scores >= score_threshold)",
        POST,
    ),
    Mutant(
        "P2 select: worst first",
        "runtime/postprocess.py",
        'np.argsort(-scores[keep], kind="stable")',
        'np.argsort(scores[keep], kind="stable")',
        POST,
    ),
    Mutant(
        "P3 paste: > threshold -> >=", "runtime/postprocess.py", "> MASK_THRESHOLD", ">= MASK_THRESHOLD", POST
    ),
    Mutant(
        "P4 paste: mask transposed",
        "runtime/postprocess.py",
        "padded[1:-1, 1:-1] = prob",
        "padded[1:-1, 1:-1] = prob.T",
        POST,
    ),
    Mutant(
        "P5 paste: box one pixel narrower",
        "runtime/postprocess.py",
        "box_w = max(ex2 - ex1 + 1, 1)",
        "box_w = max(ex2 - ex1, 1)",
        POST,
    ),
    Mutant(
        "C1 CLAHE: 8-bit RGB not equalised",
        "runtime/preprocess.py",
        "lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))",
        "lab[..., 0] = lab[..., 0]",
        PRE,
    ),
    Mutant(
        "C2 CLAHE: tile grid swapped",
        "runtime/preprocess.py",
        "tileGridSize=tile_grid)",
        "tileGridSize=tile_grid[::-1])",
        PRE,
    ),
    Mutant(
        "C3 CLAHE 16-bit RGB: L scaled by 101",
        "runtime/preprocess.py",
        "lab_f[..., 0] * (65535.0 / 100.0)",
        "lab_f[..., 0] * (65535.0 / 101.0)",
        PRE,
    ),
    Mutant(
        "C4 letterbox: padding not black",
        "runtime/preprocess.py",
        "canvas = np.zeros((out_h, out_w, *image.shape[2:]), dtype=image.dtype)",
        "canvas = np.ones((out_h, out_w, *image.shape[2:]), dtype=image.dtype)",
        PRE,
    ),
    Mutant(
        "D1 decode: EXIF turned a further 180",
        "io/decode.py",
        "            ImageOps.exif_transpose(im, in_place=True)\n",
        (
            "            _o = im.getexif().get(0x0112, 1)\n"
            "            ImageOps.exif_transpose(im, in_place=True)\n"
            "            if _o != 1:\n                im = im.rotate(180)\n"
        ),
        DECODE,
    ),
    Mutant(
        "D2 decode: EXIF ignored",
        "io/decode.py",
        "            ImageOps.exif_transpose(im, in_place=True)\n",
        "            pass\n",
        DECODE,
    ),
    Mutant(
        "D3 decode: Pillow RGB as BGR",
        "io/decode.py",
        "    return _normalise(arr, label)\n\n\ndef _int32",
        "    return _normalise(arr[..., ::-1] if arr.ndim == 3 else arr, label)\n\n\ndef _int32",
        DECODE,
    ),
    Mutant(
        "R1 RLE decode: row-major",
        "results/rle.py",
        "flat.reshape(width, height).T",
        "flat.reshape(height, width)",
        RLE,
    ),
    Mutant(
        "R2 RLE decode: runs start with 1s",
        "results/rle.py",
        "values[1::2] = True",
        "values[0::2] = True",
        RLE,
    ),
    Mutant(
        "R3 RLE string: no running sum on even runs",
        "results/rle.py",
        "counts[2::2] = np.cumsum(raw[2::2])",
        "counts[2::2] = raw[2::2]",
        RLE,
    ),
]


def killed(tests: list[str], root: Path) -> bool:
    files = [t for t in tests if (root / t).exists()]
    if not files:
        return False
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return True
    return done.returncode != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", help="also run each mutant against the tests of this commit")
    parser.add_argument("--only", default="", help="run only the mutants whose name starts so")
    args = parser.parse_args(argv)
    old_root = None
    if args.before:
        old_root = Path(tempfile.mkdtemp(prefix="mutation-before-"))
        archive = subprocess.run(
            ["git", "archive", args.before, "tests"], cwd=REPO, capture_output=True, check=True
        )
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(old_root, filter="data")
    print("| mutant | tests | before | after |\n| --- | --- | --- | --- |")
    for m in MUTANTS:
        if not m.name.startswith(args.only):
            continue
        path = SRC / m.path
        original = path.read_text()
        if original.count(m.old) != 1:
            print(f"| {m.name} | mutation site not found once | | |")
            continue
        path.write_text(original.replace(m.old, m.new))
        try:
            before = "n/a" if old_root is None else ("killed" if killed(m.tests, old_root) else "SURVIVED")
            after = "killed" if killed(m.tests, REPO) else "SURVIVED"
        finally:
            path.write_text(original)
        print(f"| {m.name} | {', '.join(Path(t).name for t in m.tests)} | {before} | {after} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
