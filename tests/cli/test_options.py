"""Options are checked when the command line is parsed (issue 16, items 12-13): one `error:` line,
exit 2, no traceback, nothing written, before any engine is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crystal_rt.cli.main import main


def _parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    return {"file": tmp_path / "a-file", "folder": tmp_path / "a-folder", "root": tmp_path}


@pytest.mark.parametrize(
    "argv",
    [
        ["detect", "ENGINE", "IMG", "-o", "{file}"],
        ["build-engine", "MODEL", "-o", "{file}"],
        ["watch", "ENGINE", "{folder}", "-o", "{file}"],
        ["synth", "-n", "1", "-o", "{file}"],
        ["export-triton", "ENGINE", "-o", "{file}"],
        ["train", "--data", "X", "-o", "{file}"],
    ],
    ids=lambda a: a[0] if isinstance(a, list) else a,
)
def test_output_folder_that_is_a_file(argv: list[str], paths: dict[str, Path], capsys: Any) -> None:
    line = _parse_error([a.format(**paths) for a in argv], capsys)
    assert f"{paths['file']} is a file, not a folder" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "ENGINE", "--data", "X", "--json", "{folder}"],
            "{folder} is a folder; give a file name",
        ),
        (["convert", "X", "-o", "{folder}"], "{folder} is a folder; give a file name"),
        (
            ["evaluate", "ENGINE", "--data", "X", "--pr-curve", "{root}/nonexistent/x.png"],
            "folder {root}/nonexistent does not exist",
        ),
        (["serve", "ENGINE", "--port", "99999"], "must be a port in 0..65535, got 99999"),
        (["serve", "ENGINE", "--port", "http"], "not an integer: 'http'"),
    ],
    ids=["evaluate-json-dir", "convert-o-dir", "pr-curve-missing-folder", "port-overflow", "port-text"],
)
def test_output_files_and_ports(argv: list[str], message: str, paths: dict[str, Path], capsys: Any) -> None:
    line = _parse_error([a.format(**paths) for a in argv], capsys)
    assert message.format(**paths) in line
    assert sorted(p.name for p in paths["root"].iterdir()) == ["a-file", "a-folder"]  # nothing written
    assert not list(paths["folder"].iterdir())


@pytest.mark.parametrize("command", ["detect", "watch", "serve", "evaluate", "bench"])
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "x"])
def test_score_threshold_is_checked_at_parse_time(
    command: str, value: str, paths: dict[str, Path], capsys: Any
) -> None:
    argv = {
        "detect": ["detect", "ENGINE", "IMG", "-o", str(paths["root"] / "out")],
        "watch": ["watch", "ENGINE", str(paths["folder"]), "-o", str(paths["root"] / "out"), "--once"],
        "serve": ["serve", "ENGINE"],
        "evaluate": ["evaluate", "ENGINE", "--data", "X"],
        "bench": ["bench", "ENGINE"],
    }[command]
    line = _parse_error([*argv, f"--score-threshold={value}"], capsys)
    assert "--score-threshold" in line
    assert ("must be in [0, 1]" in line) or ("not a number" in line)


def test_train_warns_when_iterations_do_not_pass_the_warmup(
    paths: dict[str, Path], capsys: Any, monkeypatch: Any
) -> None:
    pytest.importorskip("torch")
    import crystal_rt.train.loop as loop
    from crystal_rt.errors import CrystalRtError

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise CrystalRtError("stopped before training")

    monkeypatch.setattr(loop, "train", stop)
    out = str(paths["root"] / "run")
    argv = ["train", "--data", "X.json", "-o", out, "--iterations", "50", "--warmup", "100"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--iterations 50 is not longer than the warm-up (--warmup 100)" in " ".join(err.split())
    assert main([*argv[:-4], "--iterations", "500", "--warmup", "100"]) == 1
    assert "warm-up" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["detect", "watch", "serve", "bench"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be a bit depth in 1..16, got 0"),
        ("17", "must be a bit depth in 1..16, got 17"),
        ("x", "not an integer: 'x'"),
        ("12.5", "not an integer: '12.5'"),
    ],
)
def test_bit_depth_is_checked_at_parse_time(
    command: str, value: str, message: str, paths: dict[str, Path], capsys: Any
) -> None:
    argv = {
        "detect": ["detect", "ENGINE", "IMG", "-o", str(paths["root"] / "out")],
        "watch": ["watch", "ENGINE", str(paths["folder"]), "-o", str(paths["root"] / "out"), "--once"],
        "serve": ["serve", "ENGINE"],
        "bench": ["bench", "ENGINE"],
    }[command]
    line = _parse_error([*argv, "--bit-depth", value], capsys)
    assert "argument --bit-depth" in line and message in line
    assert not (paths["root"] / "out").exists()


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("command", ["detect", "watch", "serve", "bench"])
def test_bit_depth_reaches_the_detector(command: str, paths: dict[str, Path], monkeypatch: Any) -> None:
    from crystal_rt.errors import CrystalRtError
    from crystal_rt.runtime.detector import Detector

    given: list[Any] = []

    def load(cls: Any, engine: Any, **kwargs: Any) -> Any:
        given.append(kwargs.get("bit_depth"))
        raise CrystalRtError("stopped after loading")

    def run_bench(config: Any) -> Any:  # bench reads the manifest before it loads a Detector
        given.append(config.bit_depth)
        raise CrystalRtError("stopped before benchmarking")

    monkeypatch.setattr(Detector, "load", classmethod(load))
    monkeypatch.setattr("crystal_rt.cli.bench.run_bench", run_bench)  # where the command looks it up
    image = paths["root"] / "drop.png"
    image.write_bytes(_png())
    argv = {
        "detect": ["detect", "ENGINE", str(paths["file"]), "-o", str(paths["root"] / "out")],
        "watch": ["watch", "ENGINE", str(paths["folder"]), "-o", str(paths["root"] / "out"), "--once"],
        "serve": ["serve", "ENGINE"],
        "bench": ["bench", "ENGINE", "--images", str(image), "--cold-starts", "0"],
    }[command]
    if command == "serve":
        pytest.importorskip("fastapi")
    assert main([*argv, "--bit-depth", "12"]) == 1
    assert given[-1] == 12
