"""Helpers for the serving tests (imported as ``serve_helpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

LOW_THRESHOLD = 0.05  # the tiny random model scores low: keep some detections to compare


def png_bytes(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    base_url: str, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None, token: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            request = urllib.request.Request(base_url + "/readyz", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready after {timeout} s")


@contextmanager
def serving(app: Any, limits: Any = None, token: str | None = None) -> Iterator[tuple[str, int]]:
    """uvicorn on 127.0.0.1 and a free port, in a thread; yields (host, port). ``token``: the
    app's bearer token, for the readiness check."""
    import uvicorn

    from crystal_rt.serve.http import server_config

    config = server_config(app, limits=limits, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    wait_ready(f"http://127.0.0.1:{port}", token=token)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class LiveServer:
    base_url: str
    pid: int


# `crystal-rt serve` / `watch` before they are registered in cli/main.py: the module's own parser.
CLI_SCRIPT = """
import argparse, importlib, sys
from crystal_rt.errors import CrystalRtError
module = importlib.import_module("crystal_rt.cli." + sys.argv[1])
parser = argparse.ArgumentParser()
module.add_parser(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.run(args))
except CrystalRtError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


def start_serve_process(
    engine: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``crystal-rt serve`` in a subprocess on 127.0.0.1 and a free port."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-c",
        CLI_SCRIPT,
        "serve",
        str(engine),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


def cli_namespace(command: str, *argv: str, **overrides: Any) -> argparse.Namespace:
    import importlib

    module = importlib.import_module(f"crystal_rt.cli.{command}")
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args([command.replace("_", "-"), *argv])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args
