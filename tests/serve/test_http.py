"""The HTTP service: endpoints, limits, error JSON, busy answers, the stdlib client and `crystal-rt serve`."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import LOW_THRESHOLD, cli_namespace, free_port, png_bytes, start_serve_process, wait_ready

from crystal_rt.errors import BackendUnavailable, CrystalRtError, EngineNotFound, InvalidImage, InvalidSpec
from crystal_rt.serve.access import without_paths
from crystal_rt.serve.client import CrystalRtClient
from crystal_rt.serve.http import create_app


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("timings_ms", "image")}


@pytest.fixture(scope="module")
def client(detector: Any) -> Any:
    app = create_app(
        detector, max_body_bytes=2 * 2**20, max_pixels=1_000_000, max_concurrency=2, queue_size=4
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_health_ready_model_docs(client: Any, detector: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    model = client.get("/v1/model").json()
    assert model.pop("engine_on_disk") == "unchanged" and model == without_paths(detector.manifest.to_dict())
    assert model["source_onnx"] == Path(detector.manifest.source_onnx).name  # no server path
    assert model["model"]["class_names"] == ["__background__", "crystal"]
    assert client.get("/docs").status_code == 200
    assert "/v1/detect" in client.get("/openapi.json").json()["paths"]


def test_raw_body_and_multipart_match_in_process(client: Any, detector: Any, drop_pngs: list[bytes]) -> None:
    for data in drop_pngs[:2]:
        expected = detector.detect(data, name="x").to_dict()
        raw = client.post("/v1/detect", content=data, headers={"content-type": "image/png"})
        assert raw.status_code == 200, raw.text
        assert _strip(raw.json()) == _strip(expected)
        assert raw.json()["image"] == "<request body>"
        form = client.post("/v1/detect", files={"image": ("drop.png", data, "application/octet-stream")})
        assert form.status_code == 200, form.text
        assert _strip(form.json()) == _strip(expected) and form.json()["image"] == "drop.png"
    assert expected["num_instances"] > 0


def test_query_options(client: Any, detector: Any, drop_pngs: list[bytes]) -> None:
    data = drop_pngs[0]
    low = client.post("/v1/detect?score_threshold=0.0&name=a.png", content=data).json()
    high = client.post("/v1/detect?score_threshold=1.0", content=data).json()
    assert low["image"] == "a.png" and low["num_instances"] >= high["num_instances"] == 0
    coco = client.post("/v1/detect?format=coco", content=data)
    assert coco.status_code == 200 and isinstance(coco.json(), list)
    assert len(coco.json()) == detector.detect(data).to_dict()["num_instances"]
    for query in ("score_threshold=2", "score_threshold=abc", "format=xml"):
        bad = client.post(f"/v1/detect?{query}", content=data)
        assert bad.status_code == 422, query
        assert bad.json()["error"]["type"] == "InvalidSpec"


def test_bad_image_is_422_with_error_json_and_service_keeps_going(
    client: Any, drop_pngs: list[bytes]
) -> None:
    bad = client.post("/v1/detect?name=notes.png", content=b"this is not an image")
    assert bad.status_code == 422
    assert bad.json() == {
        "error": {"type": "InvalidImage", "message": "not a recognised image format", "input": "notes.png"}
    }
    empty = client.post("/v1/detect", content=b"")
    assert empty.status_code == 422 and empty.json()["error"]["message"] == "empty file"
    no_field = client.post("/v1/detect", files={"picture": ("a.png", drop_pngs[0], "image/png")})
    assert no_field.status_code == 422 and '"image"' in no_field.json()["error"]["message"]
    assert client.post("/v1/detect", content=drop_pngs[0]).status_code == 200


def test_body_limit(client: Any, drop_pngs: list[bytes]) -> None:
    big = b"\x89PNG" + b"\0" * (2 * 2**20 + 10)
    declared = client.post("/v1/detect", content=big)
    assert declared.status_code == 413 and declared.json()["error"]["type"] == "ImageTooLarge"

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"\0" * 65536

    streamed = client.post("/v1/detect", content=chunks())
    assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]["message"]
    assert client.post("/v1/detect", content=drop_pngs[0]).status_code == 200


def test_pixel_limit_is_413_before_decoding(client: Any) -> None:
    from crystal_rt.data.synthetic import make_drop

    too_big = client.post("/v1/detect?name=big.png", content=png_bytes(make_drop(1, 1100, 1000).image))
    assert too_big.status_code == 413
    assert too_big.json()["error"]["message"].startswith("image too large")
    assert too_big.json()["error"]["input"] == "big.png"


def test_unknown_route_is_json(client: Any) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "CrystalRtError"
    assert client.get("/v1/detect").status_code == 405


class _Blocking:
    """A Detector stand-in whose detect_pixels waits for an event (to fill the service up)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.max_pixels = inner.max_pixels
        self.preprocess = inner.preprocess
        self.manifest = inner.manifest

    def detect_pixels(self, pixels: Any, **kwargs: Any) -> Any:
        if kwargs.get("name") != "<warmup>":
            self.entered.release()
            self.gate.wait(30)
        return self.inner.detect_pixels(pixels, **kwargs)


def test_busy_service_answers_503_with_retry_after(detector: Any, drop_pngs: list[bytes]) -> None:
    blocking = _Blocking(detector)
    app = create_app(blocking, max_concurrency=1, queue_size=1)  # type: ignore[arg-type]
    with TestClient(app) as c:
        answers: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(c.post("/v1/detect", content=drop_pngs[0]).status_code)
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        assert blocking.entered.acquire(timeout=30)  # one running, the other queued
        for _ in range(200):
            if app.state.service.in_flight == 2:
                break
            threading.Event().wait(0.02)
        busy = c.post("/v1/detect", content=drop_pngs[0])
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "BackendUnavailable"
        blocking.gate.set()
        for t in threads:
            t.join(30)
        assert answers == [200, 200]
        assert c.post("/v1/detect", content=drop_pngs[0]).status_code == 200


def test_failed_warmup_is_not_ready(detector: Any) -> None:
    class Broken(_Blocking):
        def detect_pixels(self, pixels: Any, **kwargs: Any) -> Any:
            raise CrystalRtError("ONNX Runtime failed: boom")

    with TestClient(create_app(Broken(detector))) as c:  # type: ignore[arg-type]
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "boom" in ready.json()["error"]["message"]


def test_client_against_live_server(
    live_server: Any, detector: Any, drop_pngs: list[bytes], tmp_path: Any
) -> None:
    client = CrystalRtClient(live_server.base_url)
    assert client.health() and client.ready()
    path = tmp_path / "drop.png"
    path.write_bytes(drop_pngs[1])
    by_path = client.detect(path)
    assert by_path["image"] == "drop.png"
    assert _strip(by_path) == _strip(detector.detect(drop_pngs[1]).to_dict())
    assert client.detect(drop_pngs[1], score_threshold=1.0)["num_instances"] == 0
    assert client.model()["name"] == "tiny"
    with pytest.raises(InvalidImage, match="not a recognised image format") as err:
        client.detect(b"<html>nope</html>", name="page.html")
    assert err.value.path == "page.html"
    with pytest.raises(InvalidSpec):
        client.detect(drop_pngs[0], score_threshold=5)
    with pytest.raises(InvalidImage, match="file not found"):
        client.detect(tmp_path / "missing.png")
    with pytest.raises(InvalidImage, match=r"larger than 4194304 bytes \(HTTP 413\)"):
        client.detect(b"\x89PNG" + bytes(5 * 2**20))  # over the limit: drained, so the 413 arrives
    assert client.detect(drop_pngs[0])["width"] == 200  # still serving


def test_client_unreachable_server() -> None:

    client = CrystalRtClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        client.detect(b"x")
    assert not client.health()


def test_serve_command_with_missing_engine_exits_1_with_one_line(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    from crystal_rt.cli import main as cli_main
    from crystal_rt.cli import serve

    with pytest.raises(EngineNotFound):
        serve.run(cli_namespace("serve", str(tmp_path / "nothing")))
    monkeypatch.setitem(cli_main.COMMANDS, "serve", "serve")
    assert cli_main.main(["serve", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "engine not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_defaults_bind_loopback_only() -> None:
    from crystal_rt.io.decode import DEFAULT_MAX_PIXELS
    from crystal_rt.serve import http

    args = cli_namespace("serve", "e")
    assert args.host == "127.0.0.1" and args.port == 8080
    assert http.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS == args.max_pixels


def test_serve_subprocess_answers_and_stops_on_ctrl_c(tiny: Any, drop_pngs: list[bytes]) -> None:
    proc, base = start_serve_process(
        tiny.engine_dir, "--threads", "1", "--score-threshold", str(LOW_THRESHOLD)
    )
    try:
        wait_ready(base, proc=proc)
        req = urllib.request.Request(base + "/v1/detect", data=drop_pngs[0], method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["width"] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
