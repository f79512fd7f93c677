"""`serve` and `watch` on a (simulated) TensorRT engine answer what they answer on the ONNX Runtime
engine of the same model; a failing CUDA call fails one request and the service goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import free_port, wait_ready

from crystal_rt.runtime.detector import Detector
from crystal_rt.serve.http import create_app
from crystal_rt.serve.watch import Watcher, WatchOptions


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("timings_ms", "devices", "image")}


def test_http_on_tensorrt_equals_onnxruntime(
    sim_gpu, demo_trt_engine: Path, demo_ort_engine: Path, real_images: list[Path]
) -> None:
    with Detector.load(demo_trt_engine) as trt, Detector.load(demo_ort_engine) as ort:
        app = create_app(trt, max_body_bytes=16 * 2**20, max_concurrency=2, queue_size=4)
        with TestClient(app, raise_server_exceptions=False) as client:
            for path in real_images:
                data = path.read_bytes()
                answer = client.post("/v1/detect", content=data)
                assert answer.status_code == 200, answer.text
                assert answer.json()["devices"]["paste"] == "cuda:0"
                assert _strip(answer.json()) == _strip(ort.detect(data, name="x").to_dict())
            # a failing CUDA call inside a request: one typed error for it, the next one is served
            sim_gpu.fail_next("cuLaunchKernel", "CUDA_ERROR_LAUNCH_FAILED")
            failed = client.post("/v1/detect", content=real_images[0].read_bytes())
            assert failed.status_code == 500
            assert failed.json()["error"]["type"] == "CudaError"
            assert "CUDA_ERROR_LAUNCH_FAILED" in failed.json()["error"]["message"]
            again = client.post("/v1/detect", content=real_images[0].read_bytes())
            assert again.status_code == 200
            assert client.get("/readyz").status_code == 200
            bad = client.post("/v1/detect", content=b"not an image")
            assert bad.status_code == 422 and bad.json()["error"]["type"] == "InvalidImage"


def test_every_worker_is_warmed_at_start(sim_gpu, demo_trt_engine: Path) -> None:
    """On a device backend each worker thread holds its own context, stream, buffers and modules: all
    of them are made at start-up (readyz says ready only then), none on a first request."""
    with Detector.load(demo_trt_engine) as trt:
        app = create_app(trt, max_body_bytes=16 * 2**20, max_concurrency=3, queue_size=4)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            assert trt.backend.live_contexts() == 3  # one per worker (it was 1 before)


def test_watch_on_tensorrt_equals_onnxruntime(
    sim_gpu, demo_trt_engine: Path, demo_ort_engine: Path, real_images: list[Path], tmp_path: Path
) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for path in real_images:
        (in_dir / path.name).write_bytes(path.read_bytes())
    outputs = {}
    for name, engine in (("trt", demo_trt_engine), ("ort", demo_ort_engine)):
        out = tmp_path / name
        with Detector.load(engine) as det:
            options = WatchOptions(in_dir=in_dir, out_dir=out, stable_seconds=0.0, poll_seconds=0.01)
            stats = Watcher(det, options).run(once=True)
        assert stats.ok == len(real_images)
        outputs[name] = {p.name: _strip(json.loads(p.read_text())) for p in sorted(out.glob("*.json"))}
        outputs[name + "-csv"] = (out / "points.csv").read_text()
    assert outputs["trt"] == outputs["ort"] and len(outputs["trt"]) == len(real_images)
    assert outputs["trt-csv"] == outputs["ort-csv"]


def test_serve_command_on_the_simulated_gpu(
    demo_trt_engine: Path, demo_ort_engine: Path, real_images
) -> None:
    """A real `crystal-rt --simulated-gpu serve` process (the plan loads in a fresh process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "crystal_rt.cli.main", "--simulated-gpu", "serve", str(demo_trt_engine)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=120, proc=proc)  # type: ignore[arg-type]
        with Detector.load(demo_ort_engine) as ort:
            for path in real_images[:2]:
                request = urllib.request.Request(base + "/v1/detect", data=path.read_bytes(), method="POST")
                with urllib.request.urlopen(request, timeout=120) as resp:
                    answer = json.loads(resp.read())
                assert answer["devices"]["clahe"] == "cuda:0"
                assert _strip(answer) == _strip(ort.detect(path.read_bytes(), name="x").to_dict())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("serve did not stop on SIGTERM")
