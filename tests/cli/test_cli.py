"""The crystal-rt command line: outputs, exit codes and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import pytest

from crystal_rt.cli.main import main
from crystal_rt.data.synthetic import make_drop


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i, (h, w) in enumerate([(300, 400), (256, 256)]):
        cv2.imwrite(str(d / f"drop{i}.png"), make_drop(3 + i, h, w).image)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    return d


def test_detect_folder_writes_all_formats_and_reports_bad_files(tiny, image_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["detect", str(tiny.engine_dir), str(image_dir), "-o", str(out), "--score-threshold", "0.05"])
    captured = capsys.readouterr()
    assert code == 1  # one unreadable image
    assert "broken.jpg" in captured.err and "Traceback" not in captured.err
    for stem in ("drop0", "drop1"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["num_instances"] == len(data["instances"]) > 0
        assert {"decode", "clahe", "letterbox", "engine", "paste", "total"} <= set(data["timings_ms"])
        overlay = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert overlay.shape[:2] == (data["height"], data["width"])
    assert not (out / "broken.json").exists()
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert rows and set(rows[0]) == {"image", "x", "y", "score", "label"}
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == len(rows)
    # pycocotools accepts it as a results file against a matching ground truth.
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 400, "height": 300}, {"id": 2, "width": 256, "height": 256}],
        "annotations": [],
        "categories": [{"id": 1, "name": "crystal"}],
    }
    gt.createIndex()
    assert len(gt.loadRes(coco).anns) == len(coco)


def test_detect_selected_formats(tiny, image_dir, tmp_path):
    out = tmp_path / "r"
    assert (
        main(
            ["detect", str(tiny.engine_dir), str(image_dir / "drop0.png"), "-o", str(out), "--format", "csv"]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["points.csv"]


def test_detect_rejects_unknown_format(tiny, image_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["detect", str(tiny.engine_dir), str(image_dir), "-o", str(tmp_path), "--format", "xml"])
    assert "unknown format" in capsys.readouterr().err


def test_detect_missing_engine_is_one_line(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope"), str(tmp_path), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "engine not found" in err and "Traceback" not in err


def test_build_engine_cli(tiny, tmp_path, capsys):
    assert main(["build-engine", str(tiny.onnx), "-o", str(tmp_path / "e")]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert (tmp_path / "e" / "tiny.manifest.json").is_file()


def test_build_engine_from_checkpoint(tiny, tmp_path):
    assert main(["build-engine", str(tiny.checkpoint), "-o", str(tmp_path / "e"), "--no-validate"]) == 0
    assert (tmp_path / "e" / "tiny.core.onnx").is_file()
    assert (tmp_path / "e" / "tiny.onnx").is_file()


def test_build_engine_tensorrt_missing_is_one_sentence(tiny, tmp_path, capsys):
    from crystal_rt.runtime.tensorrt.modules import tensorrt_installed

    if tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    assert main(["build-engine", str(tiny.onnx), "-o", str(tmp_path), "--backend", "tensorrt"]) == 1
    err = capsys.readouterr().err.strip()
    assert "crystal-rt[gpu]" in err and "Traceback" not in err


def test_compare_cli_passes(tiny, image_dir, capsys):
    code = main(
        [
            "compare",
            str(tiny.engine_dir),
            str(image_dir / "drop0.png"),
            str(image_dir / "drop1.png"),
            "--reference",
            str(tiny.checkpoint),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity within tolerances" in out


def test_compare_cli_fails_past_tolerance(tiny, image_dir, capsys):
    code = main(
        [
            "compare",
            str(tiny.engine_dir),
            str(image_dir / "drop0.png"),
            "--reference",
            str(tiny.checkpoint),
            "--box-iou",
            "1.01",
        ]
    )
    assert code == 1
    assert "worst" in capsys.readouterr().err


def test_inspect(tiny, capsys):
    assert main(["inspect", str(tiny.engine_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "onnxruntime"
    assert main(["inspect", str(tiny.onnx)]) == 0
    data = json.loads(capsys.readouterr().out)
    resize = next(step for step in data["preprocess"]["steps"] if step["op"] == "resize")
    assert (resize["height"], resize["width"]) == (tiny.size, tiny.size)
    assert data["recipe"][-1] == f"engine input: 1 x 3 x {tiny.size} x {tiny.size}"
    assert data["recipe"][0].startswith("1. CLAHE clip 2")


def _heavy_modules_after(snippet: str, modules: tuple[str, ...]) -> list[str]:
    """Run ``snippet`` in a fresh interpreter; which of ``modules`` did it import?"""
    code = f"import sys\n{snippet}\nprint(','.join(m for m in {modules!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_help_and_version_need_no_heavy_imports():
    snippet = (
        "import io, contextlib\n"
        "from crystal_rt.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main([]) == 2"
    )
    assert _heavy_modules_after(snippet, ("torch", "onnxruntime", "onnx", "cv2", "numpy")) == []
    version = subprocess.run(
        [sys.executable, "-m", "crystal_rt.cli.main", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("crystal-rt ")


def test_import_is_light():
    snippet = "import crystal_rt\nassert crystal_rt.Detector.__name__ == 'Detector'"
    assert _heavy_modules_after(snippet, ("torch", "onnxruntime", "onnx")) == []
