"""The tests run from a clean clone alone: nothing under tests/ reads the sibling ../shared folder.

The real drop images the tests use are in tests/data/real (with their licence notice); a test that
went back to ../shared/data/real would pass on a developer's machine and skip, or fail, elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REAL = TESTS / "data" / "real"

#: ``shared/data``, ``../shared``, and the path-joined spellings ``"shared" / ...``
FORBIDDEN = re.compile(r"""shared/data|\.\./shared|["']shared["']\s*/""")


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


def test_the_real_images_are_in_the_repository() -> None:
    names = sorted(p.name for p in REAL.glob("*.jpg"))
    assert names == ["97wo_01A_1.jpg", "big_crystals_3.jpg", "echo_test_im_1.jpg"]
    assert (REAL / "README.md").is_file() and (REAL / "LICENSE").is_file()
    assert "Apache License" in (REAL / "LICENSE").read_text(encoding="utf-8")
    total = sum(p.stat().st_size for p in REAL.iterdir())
    assert total < 2_000_000, f"tests/data/real holds {total} bytes: keep the repository's test data small"
