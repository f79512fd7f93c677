"""``crystal-rt bench``: the report's shape (stages, percentiles, environment, cold start, RSS) and
the percentile math. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from crystal_rt.bench import BENCH_STAGES
from crystal_rt.bench.stats import summarize


def _bench_main(argv: list[str]) -> int:
    """Through cli.main when ``bench`` is registered there, else through the module's own parser."""
    from crystal_rt.cli.main import COMMANDS, main

    if "bench" in COMMANDS:
        return main(argv)
    from crystal_rt.cli import bench

    parser = argparse.ArgumentParser(prog="crystal-rt")
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def test_summarize_known_arrays():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["p50"] == 3.0
    assert s["p90"] == pytest.approx(4.6)  # numpy linear: 1 + 0.9 * 4 = 4.6
    assert s["p99"] == pytest.approx(4.96)
    assert (s["min"], s["max"], s["mean"], s["n"]) == (1.0, 5.0, 3.0, 5)
    data = np.arange(101, dtype=float)  # 0..100: the p-th percentile is p
    s = summarize(list(data))
    assert (s["p50"], s["p90"], s["p99"]) == (50.0, 90.0, 99.0)
    s = summarize([7.0])
    assert s["p50"] == s["p90"] == s["p99"] == s["min"] == s["max"] == 7.0
    assert summarize([4.0, 1.0]) == {"p50": 2.5, "p90": 3.7, "p99": pytest.approx(3.97), "min": 1.0,
                                     "max": 4.0, "mean": 2.5, "n": 2}  # fmt: skip
    assert summarize([]) == {"n": 0}


@pytest.mark.slow  # heavy: runs in make test-all / CI, not in a plain pytest
def test_bench_synthetic_writes_json_and_plot(tiny, tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = _bench_main(
        [
            "bench", str(tiny.engine_dir), "--synthetic", "2", "--synthetic-size", "256x320",
            "--runs", "2", "--warmup", "1", "--cold-starts", "1", "--threads-sweep", "1,2",
            "--json", str(out_json), "--plot", str(out_png),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "end_to_end" in printed and "p99" in printed and "cold start" in printed
    report = json.loads(out_json.read_text())
    assert report["schema"] == "crystal-rt-bench/1"
    assert set(BENCH_STAGES) <= set(report["stages"])
    for stage in BENCH_STAGES:
        stats = report["stages"][stage]
        assert {"p50", "p90", "p99", "min", "max", "n"} <= set(stats)
        assert stats["n"] == 2 * 2  # runs x images
        assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        assert len(report["samples_ms"][stage]) == 4
    assert report["engine_only"]["n"] == 4 and report["engine_only"]["p50"] > 0
    env = report["environment"]
    assert env["cores"] >= 1 and env["python"] and env["cpu"]
    assert {"numpy", "opencv", "onnxruntime"} <= set(env["packages"])
    assert env["engine_manifest"]["backend"] == "onnxruntime"
    cold = report["cold_start"]
    assert len(cold["runs"]) == 1 and cold["spawn_to_result_s"]["p50"] > 0
    assert cold["runs"][0]["spawn_to_result_s"] >= cold["runs"][0]["in_process_s"]
    assert cold["peak_rss_mb"] > 0 and cold["torch_imported"] is False
    assert report["memory"]["peak_rss_mb"] > 0
    assert [row["workers"] for row in report["throughput"]] == [1, 2]
    assert all(row["images_per_s"] > 0 and row["intra_op_threads"] >= 1 for row in report["throughput"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_real_images_without_cold_start(tiny, real_images, tmp_path):
    out_json = tmp_path / "real.json"
    code = _bench_main(
        ["bench", str(tiny.engine_dir), "--images", str(real_images[0]), "--runs", "1", "--warmup", "0",
         "--cold-starts", "0", "--threads-sweep", "1", "--json", str(out_json)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out_json.read_text())
    assert report["images"][0]["name"] == real_images[0].name and report["cold_start"] == {"runs": []}


def test_bench_module_imports_nothing_heavy():
    code = (
        "import sys, crystal_rt.bench, crystal_rt.cli.bench, crystal_rt.bench.runner;"
        "heavy = [m for m in ('numpy', 'cv2', 'onnxruntime', 'torch', 'matplotlib') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_on_the_simulated_gpu(demo_trt_engine, tmp_path, monkeypatch):
    """A TensorRT engine on the simulated GPU: every stage but decode on cuda:0 (device wall times),
    and the cold-start child simulates too (CRYSTAL_RT_SIMULATED_GPU is inherited)."""
    from crystal_rt.testing import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    out_json = tmp_path / "bench.json"
    code = _bench_main(
        [
            "--simulated-gpu", "bench", str(demo_trt_engine), "--synthetic", "1",
            "--synthetic-size", "300x400", "--runs", "1", "--warmup", "1", "--cold-starts", "1",
            "--threads-sweep", "1", "--json", str(out_json),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out_json.read_text())
    (devices,) = report["devices"].values()
    assert devices == {
        "decode": "cpu",
        "clahe": "cuda:0",
        "letterbox": "cuda:0",
        "engine": "cuda:0",
        "paste": "cuda:0",
    }
    assert report["stages"]["clahe"]["p50"] > 0 and report["stage_policy"] == "auto"
    assert report["cold_start"]["runs"][0]["instances"] >= 0
    assert report["environment"]["engine_manifest"]["backend"] == "tensorrt"
    assert report["environment"]["simulated_gpu"] == "crystal-rt simulated GPU"
