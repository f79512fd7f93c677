"""Issue 31: the commands the docs show and the ``next:`` hints print exist and parse, with the
flags given (a renamed flag or a missing required option in a doc fails here, not for a reader)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from crystal_rt.cli import convert, synth, train
from crystal_rt.cli.main import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]
FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence) *$",
    re.M | re.S,
)


def _doc_commands() -> list:
    """Every ``crystal-rt COMMAND ...`` of a fenced block (continuation lines joined, one per
    ``&&``/``;``/``|`` part, comments dropped)."""
    params = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line_no = text.count("\n", 0, m.start()) + 1
            for line in m.group("body").replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|\|\||;|\|", line):
                    if not part.strip().startswith("crystal-rt "):
                        continue
                    words = shlex.split(part, comments=True)
                    if len(words) > 1 and words[0] == "crystal-rt" and words[1] in COMMANDS:
                        rel = doc.relative_to(ROOT)
                        params.append(pytest.param(words[1:], id=f"{rel}:{line_no}:{' '.join(words[1:3])}"))
    return params


DOC_COMMANDS = _doc_commands()

#: what the commands print after ``next:`` (their own functions, so the hint and the test agree)
HINTS = [
    convert.next_command(Path("data/annotations.json")),
    synth.next_command(Path("drops/annotations.json")),
    train.next_command(Path("run/best.pt")),
]


def _parses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"crystal-rt {' '.join(argv)}: exit {exc.code}: {err[-1] if err else ''}")
    assert callable(args.run)


def test_the_docs_show_commands() -> None:
    shown = {argv[0] for p in DOC_COMMANDS for argv in p.values}
    assert {"demo", "build-engine", "detect", "train", "export", "serve", "watch"} <= shown


@pytest.mark.parametrize("argv", DOC_COMMANDS)
def test_doc_command_parses(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # output folders are checked where they would be made
    _parses(argv, capsys)


@pytest.mark.parametrize("hint", HINTS)
def test_next_hint_parses_and_is_what_the_docs_say(hint: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    words = shlex.split(hint)
    assert words[0] == "crystal-rt"
    _parses(words[1:], capsys)
    flags = {w for w in words[2:] if w.startswith("-")}
    documented = [
        argv for p in DOC_COMMANDS for argv in p.values if argv[0] == words[1] and flags <= set(argv)
    ]
    assert documented, f"{hint}: no doc shows crystal-rt {words[1]} with {sorted(flags)}"
