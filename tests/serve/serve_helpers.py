"""Helpers for the serving tests (imported as ``serve_helpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
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


def wait_ready(base_url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready after {timeout} s")


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
