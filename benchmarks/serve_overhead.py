"""HTTP overhead: ``crystal-rt serve`` (uvicorn, loopback) vs in-process ``Detector.detect``.

The same engine, the same encoded images, one request at a time; the two alternate image by image
(ABAB). In-process times ``Detector.detect(bytes)`` and ``to_dict()``; HTTP times the whole round
trip of a raw-body POST /v1/detect from a stdlib client (connect, upload, decode, detect, JSON
encode, download, JSON parse). The server runs in its own process on 127.0.0.1 with the same
ONNX Runtime thread count. Default engine: the shipped demo model, built into a temporary folder.
Reports, never asserts.

    PYTHONPATH=src python benchmarks/serve_overhead.py [--engine DIR] [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO / "tests" / "data" / "real"

SERVER = """
import sys, uvicorn
from crystal_rt.runtime.detector import Detector
from crystal_rt.serve.http import create_app
engine, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
app = create_app(Detector.load(engine, threads=threads), max_concurrency=1, queue_size=8)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "mean_ms": round(statistics.fmean(values), 2),
        "min_ms": round(min(values), 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def images(count: int) -> list[tuple[str, bytes]]:
    real = sorted(REAL_DIR.glob("*.jpg")) if REAL_DIR.is_dir() else []
    if real:
        return [(p.name, p.read_bytes()) for p in real[:count]]
    import cv2

    from crystal_rt.data.synthetic import make_drop

    return [
        (f"synthetic{i}.png", cv2.imencode(".png", make_drop(i, 1024, 1224).image)[1].tobytes())
        for i in range(count)
    ]


def post(base: str, data: bytes) -> dict[str, Any]:
    req = urllib.request.Request(base + "/v1/detect", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", type=Path, help="engine folder (default: the demo model, built now)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per image and path (default 20)")
    parser.add_argument("--images", type=int, default=3, help="how many images (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument(
        "--json", type=Path, default=Path("serve_overhead.json"), help="where to write results"
    )
    args = parser.parse_args()

    from crystal_rt.runtime.backends.onnxruntime import default_threads
    from crystal_rt.runtime.detector import Detector

    threads = args.threads or default_threads()
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine
        if engine is None:
            from crystal_rt.assets import demo_model
            from crystal_rt.build.engine import build_engine

            engine = Path(tmp) / "engine"
            build_engine(demo_model(), engine, name="crystals", threads=threads)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-c", SERVER, str(engine), str(port), str(threads)]
        server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not become ready") from None
                    time.sleep(0.2)
            detector = Detector.load(engine, threads=threads)
            pictures = images(args.images)
            for _, data in pictures:  # warm both paths
                detector.detect(data).to_dict()
                post(base, data)
            local: list[float] = []
            remote: list[float] = []
            per_image: dict[str, dict[str, list[float]]] = {}
            for _ in range(args.runs):
                for name, data in pictures:
                    t0 = time.perf_counter()
                    a = detector.detect(data).to_dict()
                    t1 = time.perf_counter()
                    b = post(base, data)
                    t2 = time.perf_counter()
                    if a["num_instances"] != b["num_instances"]:
                        raise RuntimeError(f"{name}: HTTP and in-process disagree")
                    local.append((t1 - t0) * 1e3)
                    remote.append((t2 - t1) * 1e3)
                    slot = per_image.setdefault(name, {"in_process": [], "http": []})
                    slot["in_process"].append((t1 - t0) * 1e3)
                    slot["http"].append((t2 - t1) * 1e3)
        finally:
            server.terminate()
            server.wait(30)
    report = {
        "benchmark": "serve_overhead",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": str(args.engine or "demo model crystals.onnx (built for this run)"),
        "threads": threads,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "images": {name: len(data) for name, data in pictures},
        "in_process": summary(local),
        "http": summary(remote),
        "overhead_p50_ms": round(percentile(remote, 50) - percentile(local, 50), 2),
        "per_image": {name: {k: summary(v) for k, v in slots.items()} for name, slots in per_image.items()},
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"in-process p50 {report['in_process']['p50_ms']} ms, p99 {report['in_process']['p99_ms']} ms; "
        f"HTTP p50 {report['http']['p50_ms']} ms, p99 {report['http']['p99_ms']} ms; "
        f"overhead p50 {report['overhead_p50_ms']} ms ({len(local)} runs each) -> {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
