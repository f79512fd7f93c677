"""``crystal-rt serve --triton``: the demo engine behind a real Triton server (PyTriton), loopback only.

PyTriton needs numpy < 2 (OpenCV 5 needs >= 2), so these tests run in the ``triton`` extra's own
venv (``.ci/run`` makes one) and skip elsewhere. The client side is tritonclient, as a user's would be.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("pytriton.triton")
pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")

from crystal_rt.assets import demo_model  # noqa: E402
from crystal_rt.build.engine import build_engine  # noqa: E402
from crystal_rt.runtime.detector import Detector  # noqa: E402
from crystal_rt.serve.pytriton import TritonPorts, bind_triton  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Detector, int]]:
    engine = tmp_path_factory.mktemp("engine")
    build_engine(demo_model(), engine)
    detector = Detector.load(engine)
    http, grpc, metrics = _free_ports(3)
    triton = bind_triton(detector, model_name="crystals", ports=TritonPorts(http, grpc, metrics))
    triton.run()
    try:
        yield triton, detector, http
    finally:
        triton.stop()
        detector.close()


def _infer(port: int, data: bytes) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=object))
    answer = client.infer("crystals", [image], outputs=[httpclient.InferRequestedOutput("result")])
    result: dict[str, Any] = json.loads(answer.as_numpy("result")[0][0])
    return result


def test_triton_answers_like_the_detector(served: tuple[Any, Detector, int]) -> None:
    _, detector, port = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("crystals")
    images = sorted(REAL.glob("*.jpg")) if REAL.is_dir() else []
    if not images:
        pytest.skip(f"no real images in {REAL}")
    for path in images:
        data = path.read_bytes()
        got = _infer(port, data)
        want = detector.detect(data, name="<triton>").to_dict()
        assert got["num_instances"] == want["num_instances"] > 0
        assert [i["bbox"] for i in got["instances"]] == [i["bbox"] for i in want["instances"]]


def test_bad_image_is_an_error_for_that_request_only(served: tuple[Any, Detector, int]) -> None:
    _, _, port = served
    bad = _infer(port, b"<html>not an image</html>")
    assert bad["error"]["type"] == "InvalidImage"
    assert "not a recognised image format" in bad["error"]["message"]
    # The server carries on: a good image right after is answered.
    drop = np.full((64, 80), 128, np.uint8)
    _, png = cv2.imencode(".png", drop)
    good = _infer(port, png.tobytes())
    assert "error" not in good and (good["width"], good["height"]) == (80, 64)
