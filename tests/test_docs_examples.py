"""The documentation is tested: its examples run, its relative links resolve, the README stays a front page.

Convention (CONTRIBUTING.md, "Documentation"): a fenced block whose info string is ``python run`` is
run with this Python, one whose info string is ``bash run`` with ``bash -euo pipefail``; every other
block is documentation only. GitHub highlights a block by the info string's first word, so the
marker does not show. Each block runs alone in a fresh folder that holds ``tests/data/real`` (the
three real drops, linked), as a shell in a checkout would see them, with the kernel and engine
caches inside that folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md"), ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"])
DOCS = [d for d in DOCS if d.is_file()]

FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence) *$",
    re.M | re.S,
)
RUNNERS = {"python run": "python", "bash run": "bash"}
TIMEOUT_S = 300

#: The two set-up commands (README, "Set up"); .ci/run runs what they run.
SETUP_COMMANDS = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install ".[cpu]" && crystal-rt demo',
    '. .venv/bin/activate && pip install ".[dev]" && pytest',
)


def _blocks(path: Path) -> list[tuple[str, int, str]]:
    """(info string, line number, code) of every fenced block in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        lines = m.group("body").splitlines(True)
        body = "".join(line[indent:] if line[:indent].strip() == "" else line for line in lines)
        out.append((m.group("info").strip(), text.count("\n", 0, m.start()) + 1, body))
    return out


def _runnable() -> list:
    params = []
    for doc in DOCS:
        for info, line, code in _blocks(doc):
            if info in RUNNERS:
                rel = doc.relative_to(ROOT)
                params.append(pytest.param(RUNNERS[info], code, id=f"{rel}:{line}"))
    return params


RUNNABLE = _runnable()


def test_readme_examples_are_run() -> None:
    """The quick start (bash) and the Python API example are among the runnable blocks."""
    infos = [info for info, _, _ in _blocks(README)]
    assert infos.count("bash run") >= 1, "README's quick start must be a ```bash run block"
    assert infos.count("python run") >= 1, "README's Python API example must be a ```python run block"
    quick = next(code for info, _, code in _blocks(README) if info == "bash run")
    assert "python -m crystal_rt.assets" in quick
    api = next(code for info, _, code in _blocks(README) if info == "python run")
    assert "demo_model()" in api


@pytest.mark.parametrize(("runner", "code"), RUNNABLE)
def test_doc_example_runs(runner: str, code: str, tmp_path: Path) -> None:
    (tmp_path / "tests" / "data").mkdir(parents=True)
    real = ROOT / "tests" / "data" / "real"
    (tmp_path / "tests" / "data" / "real").symlink_to(real, target_is_directory=True)
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "CRYSTAL_RT_CACHE": str(tmp_path / "cache"),
        "NO_COLOR": "1",
        "COLUMNS": "100",
    }
    cmd = [sys.executable, "-c", code] if runner == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    out, err = proc.stdout[-4000:], proc.stderr[-4000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


# ---- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#* *$", text, re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading in {dest.name})")
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


# ---- the README is a front page -------------------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    size = README.stat().st_size
    assert size <= 12 * 1024, f"README.md is {size} bytes; move detail into docs/ (at most 12 KiB)"
    text = README.read_text(encoding="utf-8")
    assert "## Contents" in text
    for command in SETUP_COMMANDS:
        assert f"```\n{command}\n```" in text, f"README's set-up command changed: {command}"
