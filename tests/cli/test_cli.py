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
    for stem in ("drop0.png", "drop1.png"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["num_instances"] == len(data["instances"]) > 0
        assert {"decode", "clahe", "letterbox", "engine", "paste", "total"} <= set(data["timings_ms"])
        overlay = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert overlay.shape[:2] == (data["height"], data["width"])
    assert not (out / "broken.jpg.json").exists()
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert rows and list(rows[0]) == ["image", "x", "y", "score", "label", "index"]  # as watch writes it
    assert {r["image"] for r in rows} <= {"drop0.png", "drop1.png"}
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


# --- issue 16: reusing an output folder, nested folders, names, progress ---------------------
def _detect(tiny, *argv):
    return main(
        ["detect", str(tiny.engine_dir), *map(str, argv), "--score-threshold", "0.05", "--threads", "1"]
    )


def _rows(out):
    with (out / "points.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_detect_into_a_used_folder_merges_by_image(tiny, image_dir, tmp_path):
    out = tmp_path / "results"
    assert _detect(tiny, image_dir / "drop0.png", "-o", out) == 0
    first = _rows(out)
    assert first and {r["image"] for r in first} == {"drop0.png"}
    assert _detect(tiny, image_dir / "drop1.png", "-o", out) == 0  # another image: the first run's rows stay
    rows = _rows(out)
    assert [r for r in rows if r["image"] == "drop0.png"] == first
    counts = {
        n: json.loads((out / f"{n}.json").read_text())["num_instances"] for n in ("drop0.png", "drop1.png")
    }
    assert {n: sum(r["image"] == n for r in rows) for n in counts} == counts
    coco = json.loads((out / "coco_results.json").read_text())
    assert {e["file_name"] for e in coco} == {"drop0.png", "drop1.png"} and len(coco) == len(rows)
    assert {e["image_id"] for e in coco} == {1, 2}
    # The same image again, without overlays: its rows replaced (not doubled), its overlay removed.
    assert _detect(tiny, image_dir / "drop0.png", "-o", out, "--formats", "json,csv,coco") == 0
    again = _rows(out)
    assert sorted(map(tuple, (r.values() for r in again))) == sorted(map(tuple, (r.values() for r in rows)))
    assert not (out / "drop0.png.overlay.png").exists() and (out / "drop1.png.overlay.png").exists()
    assert len(json.loads((out / "coco_results.json").read_text())) == len(rows)


def test_detect_recursive_keeps_relative_paths(tiny, tmp_path, capsys):
    tree = tmp_path / "plates"
    for plate in ("p1", "p2"):
        (tree / plate / "A1").mkdir(parents=True)
        cv2.imwrite(str(tree / plate / "A1" / "drop.png"), make_drop(7, 200, 240).image)
    out = tmp_path / "out"
    assert _detect(tiny, tree, "-o", out) == 1  # nothing at the top: says where the images are
    err = capsys.readouterr().err
    assert "no images found" in err and "2 image(s) in sub-folders: add --recursive" in err
    assert _detect(tiny, tree, "-o", out, "--recursive", "--format", "json,csv") == 0
    names = ["p1/A1/drop.png", "p2/A1/drop.png"]
    for name in names:
        assert json.loads((out / f"{name}.json").read_text())["image"] == name
    assert {r["image"] for r in _rows(out)} <= set(names)
    # Same-name images from two folders given side by side: named by the folder they share.
    out2 = tmp_path / "out2"
    assert _detect(tiny, tree / "p1" / "A1", tree / "p2" / "A1", "-o", out2, "--format", "json") == 0
    assert sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*.json")) == [
        "p1/A1/drop.png.json", "p2/A1/drop.png.json",
    ]  # fmt: skip


def test_detect_prints_progress_lines_without_a_terminal(tiny, image_dir, tmp_path, capsys):
    _detect(tiny, image_dir, "-o", tmp_path / "o")
    err = capsys.readouterr().err
    assert "detecting in 3 image(s)" in err and "detecting: 3/3" in err


def test_format_and_size_spellings_agree():
    from crystal_rt.cli.main import build_parser

    parser = build_parser()
    detect = parser.parse_args(["detect", "E", "I", "-o", "O", "--formats", "json,csv"])
    watch = parser.parse_args(["watch", "E", "I", "-o", "O", "--format", "csv"])
    assert detect.format == ["json", "csv"] and watch.formats == ("json", "csv")
    bench_new = parser.parse_args(["bench", "E", "--size", "1224x1024"])
    bench_old = parser.parse_args(["bench", "E", "--synthetic-size", "1024x1224"])  # HxW, kept
    synth = parser.parse_args(["synth", "-n", "1", "-o", "O", "--size", "1224x1024"])
    assert bench_new.synthetic_size == bench_old.synthetic_size == synth.size == (1024, 1224)
    assert parser.parse_args(["bench", "E"]).synthetic_size == (1024, 1224)
