"""Fixtures for the serving tests: a Detector on the tiny engine, test images, a live server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import LiveServer, png_bytes, serving

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
    from crystal_rt.serve.http import create_app

    app = create_app(detector, max_body_bytes=4 * 2**20, max_concurrency=2, queue_size=4)
    with serving(app) as (host, port):
        yield LiveServer(f"http://{host}:{port}", os.getpid())
