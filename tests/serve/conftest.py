"""Fixtures for the serving tests: a Detector on the tiny engine, test images, a live server."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import LiveServer, png_bytes, wait_ready

from crystal_rt.data.synthetic import make_drop


@pytest.fixture(scope="session")
def detector(tiny: Any) -> Iterator[Any]:
    from serve_helpers import LOW_THRESHOLD

    from crystal_rt.runtime.detector import Detector

    det = Detector.load(tiny.engine_dir, score_threshold=LOW_THRESHOLD, threads=1)
    yield det
    det.close()


@pytest.fixture(scope="session")
def drop_pngs() -> list[bytes]:
    """Four small 8-bit gray drop images (PNG bytes), 200 pixels wide."""
    return [png_bytes(make_drop(10 + i, 160 + 16 * i, 200).image) for i in range(4)]


@pytest.fixture
def live_server(detector: Any) -> Iterator[LiveServer]:
    """uvicorn in a thread on 127.0.0.1 and a random free port, serving the tiny engine."""
    import uvicorn

    from crystal_rt.serve.http import create_app, server_config

    app = create_app(detector, max_body_bytes=4 * 2**20, max_concurrency=2, queue_size=4)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    yield LiveServer(base, os.getpid())
    server.should_exit = True
    thread.join(timeout=10)
