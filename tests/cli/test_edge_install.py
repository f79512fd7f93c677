"""Issue 31: in an edge install (``pip install ".[cpu]"``: no torch, onnx, FastAPI, cuda-python ...)
every command that needs an extra says which, in one line, and never ends in a traceback; and
rich prints install hints and paths with their square brackets.

The edge install is simulated in one child interpreter: a meta-path finder makes the packages of
the other extras raise ModuleNotFoundError, as they do where they are not installed, and each
command runs through ``crystal_rt.cli.main.main`` with its stderr captured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from crystal_rt.assets import demo_model

#: import names the [cpu] extra does not install (torch and onnx: export; fastapi, uvicorn: serve ...)
NOT_IN_CPU = (
    "torch", "torchvision", "onnx", "fastapi", "uvicorn", "python_multipart", "multipart", "starlette",
    "httpx", "tensorrt", "tensorrt_rtx", "cuda", "modelopt", "pytriton", "tritonclient",
)  # fmt: skip

CHILD = """
import contextlib, io, json, sys, traceback

BLOCKED = set(json.loads(sys.argv[1]))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
from crystal_rt.cli.main import main

out = {}
for argv in json.loads(sys.argv[2]):
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            code = "raised"
            traceback.print_exc(file=err)
    out[" ".join(argv)] = [code, std.getvalue(), err.getvalue()]
print(json.dumps(out))
"""


def _run_edge(commands: list[list[str]], cwd: Path) -> dict[str, tuple[object, str, str]]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(NOT_IN_CPU), json.dumps(commands)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def test_every_command_needing_an_extra_says_which_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"a checkpoint")  # never read: torch is missing first
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((64, 64), 128, np.uint8))
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "crystal"}]}
    (tmp_path / "d.json").write_text(json.dumps(coco))
    model = str(demo_model())
    expected = {  # command -> the extra its one line names
        "build-engine run/best.pt -o eng": "export",
        "export run/best.pt -o x.onnx": "export",
        "evaluate run/best.pt --data d.json": "export",
        "compare eng --reference run/best.pt images": "export",
        "train --data d.json -o r": "train",
        f"calibrate {model} --images images -o c.onnx": "calibrate",
        f"inspect {model}": "export",
        "serve eng": "serve",
        "cuda build": "gpu",
    }
    results = _run_edge([c.split() for c in expected], tmp_path)
    for command, extra in expected.items():
        code, _out, err = results[command]
        assert code == 1, f"{command}: exit {code}\n{err}"
        assert "Traceback" not in err and "ModuleNotFoundError" not in err, f"{command}:\n{err}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}:\n{err}"
        assert f'pip install "crystal-rt[{extra}]"' in lines[0], f"{command}: {lines[0]}"


def test_install_hints_and_paths_keep_their_brackets(tmp_path: Path) -> None:
    """rich read ``[gpu-cu13]`` and ``[v2]`` as markup: the hint said ``pip install "crystal-rt"``
    and the engine was said to be in ``eng/`` though it went into ``eng[v2]/``."""
    results = _run_edge([["build-engine", str(demo_model()), "-o", "eng[v2]/"], ["cuda", "info"]], tmp_path)
    code, out, err = results[f"build-engine {demo_model()} -o eng[v2]/"]
    assert code == 0, err
    assert (tmp_path / "eng[v2]" / "crystals.manifest.json").is_file()
    assert 'pip install "crystal-rt[gpu-cu13]"' in err  # --backend auto's reason: no cuda-python
    assert "wrote eng[v2]/crystals.onnx" in err and "-> eng[v2]/crystals.onnx" in out
    code, out, err = results["cuda info"]
    assert code == 0 and 'pip install "crystal-rt[gpu]"' in out, out


def test_an_unguarded_import_of_an_extra_is_still_one_line(monkeypatch, capsys) -> None:
    """A code path that imports an optional package without require() (a new one, or one the
    checks above do not reach) ends in the same one line, naming the extra, not a traceback."""
    import pytest

    from crystal_rt.cli import inspect
    from crystal_rt.cli.main import main

    def needs(name: str):
        def run(args: object) -> int:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        return run

    monkeypatch.setattr(inspect, "run", needs("torchvision.ops"))
    assert main(["inspect", "x.onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: crystal-rt inspect needs torchvision, which is not installed: "
        'pip install "crystal-rt[export]"'
    ]
    monkeypatch.setattr(inspect, "run", needs("fastapi"))
    assert main(["inspect", "x.onnx"]) == 1
    assert 'pip install "crystal-rt[serve]"' in capsys.readouterr().err
    monkeypatch.setattr(inspect, "run", needs("numpy"))  # a base dependency: a broken install, shown
    with pytest.raises(ModuleNotFoundError):
        main(["inspect", "x.onnx"])
