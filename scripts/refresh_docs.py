"""Rerun the commands whose output the docs quote, keep the output, rewrite the quoted blocks.

    PYTHONPATH=src python scripts/refresh_docs.py            # rerun, keep, rewrite
    PYTHONPATH=src python scripts/refresh_docs.py --no-run   # only rewrite from the kept outputs

Kept in benchmarks/results/docs/ (tests/test_docs_numbers.py fails when a doc and its kept output
disagree, and reruns the detection to check the kept output is today's):

* ``97wo_01A_1.jpg.json``: ``crystal-rt demo -o DIR --images 1`` (builds the demo model's engine),
  then ``crystal-rt detect DIR/engine tests/data/real/97wo_01A_1.jpg -o OUT --formats json``;
  README.md's "Output format" block is its first instance, RLE cut, timings rounded as printed.
* ``lint-imports.txt``: ``lint-imports``; docs/architecture.md's block is its contract lines.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "benchmarks" / "results" / "docs"
DETECT_JSON = KEPT / "97wo_01A_1.jpg.json"
LINT_TXT = KEPT / "lint-imports.txt"
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
RLE_SHOWN = 30  # characters of the first instance's RLE string quoted in README

#: README's block: after this sentence, the first ```json fence.
README_ANCHOR = "first instance and with the RLE string shortened:"
ARCH_ANCHOR = "`lint-imports` after:"


def run_detect() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        demo, out = Path(tmp) / "demo", Path(tmp) / "out"
        cli = [sys.executable, "-m", "crystal_rt.cli.main"]
        subprocess.run([*cli, "demo", "-o", str(demo), "--images", "1"], check=True, capture_output=True)
        image = REPO / "tests" / "data" / "real" / "97wo_01A_1.jpg"
        detect = [*cli, "detect", str(demo / "engine"), str(image), "-o", str(out), "--formats", "json"]
        subprocess.run(detect, check=True, capture_output=True)
        KEPT.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "97wo_01A_1.jpg.json", DETECT_JSON)


def run_lint_imports() -> None:
    done = subprocess.run(["lint-imports"], cwd=REPO, capture_output=True, text=True, check=True)
    KEPT.mkdir(parents=True, exist_ok=True)
    LINT_TXT.write_text(done.stdout)


def readme_block(result: dict[str, Any]) -> str:
    """README's JSON block from a kept ``detect`` output."""
    first = result["instances"][0]
    counts = first["mask"]["counts"]
    timings = result["timings_ms"]
    stages = ", ".join(f'"{k}": {v}' for k, v in timings.items() if k != "total")
    return (
        "{\n"
        f'  "image": "{result["image"]}", "width": {result["width"]}, "height": {result["height"]}, '
        f'"num_instances": {result["num_instances"]},\n'
        '  "instances": [\n'
        f'    {{"label": {first["label"]}, "label_name": "{first["label_name"]}", '
        f'"score": {first["score"]},\n'
        f'     "bbox": {json.dumps(first["bbox"])},\n'
        f'     "mask": {{"size": {json.dumps(first["mask"]["size"])}, "counts": '
        f"{json.dumps(counts[:RLE_SHOWN] + ('...' if len(counts) > RLE_SHOWN else ''))}}},\n"
        f'     "area": {first["area"]}, "centroid": {json.dumps(first["centroid"])}}}\n'
        "  ],\n"
        f'  "timings_ms": {{{stages},\n'
        f'                 "total": {timings["total"]}}}\n'
        "}\n"
    )


def lint_block(output: str) -> str:
    """architecture.md's block: the contract lines of a kept ``lint-imports`` output."""
    keep = [
        line
        for line in output.splitlines()
        if line.endswith((" KEPT", " BROKEN")) or line.startswith("Contracts:")
    ]
    return "\n".join(keep) + "\n"


def fenced_after(text: str, anchor: str) -> tuple[int, int]:
    """(start, end) of the body of the first fenced block after ``anchor``."""
    at = text.index(anchor)
    m = re.compile(r"^```[a-z]*\n(.*?)^```$", re.M | re.S).search(text, at)
    if m is None:
        raise ValueError(f"no fenced block after {anchor!r}")
    return m.start(1), m.end(1)


def rewrite(path: Path, anchor: str, body: str) -> bool:
    text = path.read_text(encoding="utf-8")
    start, end = fenced_after(text, anchor)
    new = text[:start] + body + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-run", action="store_true", help="rewrite the docs from the kept outputs only")
    args = parser.parse_args(argv)
    if not args.no_run:
        run_detect()
        run_lint_imports()
    changed = rewrite(README, README_ANCHOR, readme_block(json.loads(DETECT_JSON.read_text())))
    changed |= rewrite(ARCHITECTURE, ARCH_ANCHOR, lint_block(LINT_TXT.read_text()))
    print("docs rewritten" if changed else "docs already match the kept outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
