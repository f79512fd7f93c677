"""The tests run from a clean clone alone: nothing under tests/ reads the sibling ../shared folder.

The real drop images the tests use are in tests/data/real (with their licence notice); a test that
went back to ../shared/data/real would pass on a developer's machine and skip, or fail, elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REAL = TESTS / "data" / "real"

#: ``shared/data``, ``shared/docs``, ``../shared``, and the path-joined spellings ``"shared" / ...``
FORBIDDEN = re.compile(r"""shared/data|shared/docs|\.\./shared|["']shared["']\s*/""")
ROOT = TESTS.parent
#: Besides tests/: the docs, the code, the scripts and CI (benchmarks/results/ holds recorded output).
ELSEWHERE = (
    "README.md",
    "CONTRIBUTING.md",
    "CHANGELOG.md",
    "Makefile",
    "pyproject.toml",
    "docs",
    "src",
    "scripts",
    "benchmarks",
    ".ci",
)


def test_no_test_reads_the_shared_folder() -> None:
    me = Path(__file__).resolve()
    offenders = []
    for path in sorted(TESTS.rglob("*")):
        if not path.is_file() or path.resolve() == me or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images, .npz fixtures
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{number}: {line.strip()}")
    assert not offenders, "tests must not read ../shared (use tests/data/real):\n" + "\n".join(offenders)


def test_nothing_else_points_at_the_shared_folder() -> None:
    """The docs link the in-repository copies (docs/contract.md, docs/clahe-spec.md, tests/data/real)."""
    offenders = []
    for top in ELSEWHERE:
        base = ROOT / top
        for path in sorted([base] if base.is_file() else base.rglob("*")):
            rel = path.relative_to(ROOT)
            generated = "__pycache__" in rel.parts or any(part.endswith(".egg-info") for part in rel.parts)
            if not path.is_file() or generated or rel.parts[:2] == ("benchmarks", "results"):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # the ONNX asset, images
            offenders += [
                f"{rel}:{n}: {line.strip()}"
                for n, line in enumerate(text.splitlines(), 1)
                if FORBIDDEN.search(line)
            ]
    assert not offenders, "point at the copies in the repository:\n" + "\n".join(offenders)


def test_the_real_images_are_in_the_repository() -> None:
    names = sorted(p.name for p in REAL.glob("*.jpg"))
    assert names == ["97wo_01A_1.jpg", "big_crystals_3.jpg", "echo_test_im_1.jpg"]
    assert (REAL / "README.md").is_file() and (REAL / "LICENSE").is_file()
    assert "Apache License" in (REAL / "LICENSE").read_text(encoding="utf-8")
    total = sum(p.stat().st_size for p in REAL.iterdir())
    assert total < 2_000_000, f"tests/data/real holds {total} bytes: keep the repository's test data small"
