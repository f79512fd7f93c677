"""Who may use the HTTP service (issue 29, item 12): a bearer token, the Host header, cross-origin
requests, binds beyond loopback, and no server paths in the answers."""

from __future__ import annotations

import hmac
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import CLI_SCRIPT, LOW_THRESHOLD, cli_namespace, free_port, serving, wait_ready

from crystal_rt.errors import AccessDenied, InvalidOption
from crystal_rt.serve import access
from crystal_rt.serve.access import TOKEN_ENV, allowed_hosts, check_bind, read_token
from crystal_rt.serve.client import CrystalRtClient
from crystal_rt.serve.http import create_app

TOKEN = "s3cret-token-for-the-tests-0123456789"
LOCAL = "http://127.0.0.1:8080"


class _Counting:
    """The detector, counting the images that reach it (the warm-up not counted)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0
        self.max_pixels, self.preprocess, self.manifest = inner.max_pixels, inner.preprocess, inner.manifest

    def detect_pixels(self, pixels: Any, **kwargs: Any) -> Any:
        if kwargs.get("name") != "<warmup>":
            self.calls += 1
        return self.inner.detect_pixels(pixels, **kwargs)


def _error(answer: Any) -> dict[str, Any]:
    assert answer.headers["content-type"] == "application/json"
    error: dict[str, Any] = answer.json()["error"]
    return error


# --- the token -------------------------------------------------------------------------------
def test_requests_without_the_right_token_are_401(
    detector: Any, drop_pngs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[bytes] = []
    real_compare = hmac.compare_digest

    def compare_digest(a: Any, b: Any) -> bool:  # the stdlib's, recorded: the check is constant-time
        compared.append(a)
        return real_compare(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", compare_digest)
    counting = _Counting(detector)
    with TestClient(create_app(counting, token=TOKEN), base_url=LOCAL) as c:  # type: ignore[arg-type]
        wrong = ["", "Bearer", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN]
        for header in [None, *wrong]:
            headers = {} if header is None else {"Authorization": header}
            for method, path in [("POST", "/v1/detect"), ("GET", "/v1/model"), ("GET", "/readyz")]:
                answer = c.request(method, path, content=drop_pngs[0], headers=headers)
                assert answer.status_code == 401, (header, path)
                assert answer.headers["www-authenticate"].startswith('Bearer realm="crystal-rt"')
                assert _error(answer)["type"] == "AccessDenied"
                assert "bearer token" in _error(answer)["message"] and TOKEN not in answer.text
        assert counting.calls == 0
        assert compared  # hmac.compare_digest decided
        for scheme in ("Bearer", "bearer"):
            ok = c.post("/v1/detect", content=drop_pngs[0], headers={"Authorization": f"{scheme} {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["width"] == 200
        assert counting.calls == 2
        assert c.get("/healthz").json() == {"status": "ok"}  # open: liveness probes, the docs
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_client_sends_the_token(
    detector: Any, drop_pngs: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    app = create_app(detector, token=TOKEN, allowed_hosts=allowed_hosts("127.0.0.1"))
    with serving(app, token=TOKEN) as (host, port):
        base = f"http://{host}:{port}"
        expected = detector.detect(drop_pngs[0], name="x", score_threshold=LOW_THRESHOLD).to_dict()
        expected = expected["num_instances"]
        client = CrystalRtClient(base, token=TOKEN)
        assert client.detect(drop_pngs[0], score_threshold=LOW_THRESHOLD)["num_instances"] == expected
        assert client.model()["name"] == detector.manifest.name and client.ready()
        assert TOKEN not in repr(client)
        with pytest.raises(AccessDenied, match=r"needs a bearer token.*\(HTTP 401\)") as err:
            CrystalRtClient(base).detect(drop_pngs[0])
        assert err.value.status == 401  # type: ignore[attr-defined]
        with pytest.raises(AccessDenied, match=r"wrong bearer token.*\(HTTP 401\)"):
            CrystalRtClient(base, token="x" * 40).model()
        monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the environment variable, as the service reads it
        assert CrystalRtClient(base).detect(drop_pngs[0])["width"] == 200


def test_token_file_and_environment(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(good, environ={}) == TOKEN
    assert read_token(None, environ={TOKEN_ENV: f" {TOKEN}\n"}) == TOKEN
    assert read_token(good, environ={TOKEN_ENV: "y" * 20}) == TOKEN  # the file wins
    assert read_token(None, environ={}) is None
    bad_tokens = [("", "is empty"), ("short\n", "fewer than 16"), ("a token with spaces\n", "printable")]
    for text, message in bad_tokens:
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(InvalidOption, match=message):
            read_token(bad, environ={})
    with pytest.raises(InvalidOption, match="token file not found") as err:
        read_token(tmp_path / "missing", environ={})
    assert err.value.path == str(tmp_path / "missing")
    with pytest.raises(InvalidOption, match=f"the token in {TOKEN_ENV} is empty"):
        read_token(None, environ={TOKEN_ENV: ""})


# --- the bind --------------------------------------------------------------------------------
def test_binds_beyond_loopback_need_a_token_or_insecure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before anything is bound (nothing here binds beyond 127.0.0.1)."""
    from crystal_rt.cli import main as cli_main
    from crystal_rt.cli import serve

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        check_bind(host, token=None, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.20", "crystals.lab"):
        with pytest.raises(InvalidOption, match=re.escape(f"refusing to listen on {host} without a token")):
            check_bind(host, token=None, insecure=False)
        check_bind(host, token=TOKEN, insecure=False)
        check_bind(host, token=None, insecure=True)
        with pytest.raises(InvalidOption, match="refusing to serve Triton"):
            check_bind(host, token=TOKEN, insecure=False, triton=True)

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    missing = str(tmp_path / "no-engine")  # refused before the engine is looked for
    with pytest.raises(InvalidOption, match=r"refusing to listen on 0\.0\.0\.0"):
        serve.run(cli_namespace("serve", missing, "--host", "0.0.0.0"))
    with pytest.raises(InvalidOption, match=r"refusing to serve Triton on 0\.0\.0\.0"):
        serve.run(cli_namespace("serve", missing, "--host", "0.0.0.0", "--triton"))
    with pytest.raises(InvalidOption, match="does not apply to --triton"):
        serve.run(cli_namespace("serve", missing, "--triton", "--token-file", str(tmp_path / "t")))
    monkeypatch.setitem(cli_main.COMMANDS, "serve", "serve")
    assert cli_main.main(["serve", missing, "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without a token" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --- Host and Origin -------------------------------------------------------------------------
def test_host_header_must_name_this_service(detector: Any) -> None:
    loopback = allowed_hosts("127.0.0.1")
    with TestClient(create_app(detector, allowed_hosts=loopback), base_url=LOCAL) as c:
        for host in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.1.2.3", "127.0.0.1"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example"):
            answer = c.get("/v1/model", headers={"Host": host})
            assert answer.status_code == 400, host
            assert _error(answer)["message"].startswith(f"Host {host!r} is not this service's")
    extra = allowed_hosts("127.0.0.1", ["crystals.lab"])
    with TestClient(create_app(detector, allowed_hosts=extra), base_url=LOCAL) as c:
        assert c.get("/healthz", headers={"Host": "crystals.lab:8080"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "other.lab"}).status_code == 400
    assert allowed_hosts("127.0.0.1", ["*"]) is None  # any host
    wildcard = allowed_hosts("0.0.0.0")
    assert wildcard is not None and access.socket.gethostname().lower() in wildcard


def test_cross_origin_requests_never_reach_the_model(detector: Any, drop_pngs: list[bytes]) -> None:
    """A web page of another origin posting ``text/plain`` (a "simple" request: no pre-flight) is
    403 before its body is read; the service's own origin (its /docs page) is served."""
    counting = _Counting(detector)
    with TestClient(create_app(counting), base_url=LOCAL) as c:  # type: ignore[arg-type]
        refused = [
            {"Origin": "http://evil.example", "Content-Type": "text/plain"},
            {"Origin": "http://127.0.0.1:9999", "Content-Type": "text/plain"},  # another port: another origin
            {"Origin": "https://127.0.0.1:8080"},
            {"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"},
            {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},  # a browser's, without Origin
            {"Sec-Fetch-Site": "same-site"},
        ]
        for headers in refused:
            answer = c.post("/v1/detect", content=drop_pngs[0], headers=headers)
            assert answer.status_code == 403, headers
            assert _error(answer)["message"].startswith("cross-origin request refused")
        assert c.get("/v1/model", headers={"Origin": "http://evil.example"}).status_code == 403
        assert counting.calls == 0
        own = [{"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}, {"Origin": "http://127.0.0.1:8080"}]
        for headers in own:
            assert c.post("/v1/detect", content=drop_pngs[0], headers=headers).status_code == 200
        docs_link = c.get("/docs", headers={"Sec-Fetch-Site": "cross-site"})  # a link from a wiki page
        assert docs_link.status_code == 200
        assert counting.calls == 2


# --- no server paths -------------------------------------------------------------------------
def test_model_and_warnings_show_no_server_paths(tiny: Any, tmp_path: Path) -> None:
    from crystal_rt.runtime.detector import Detector

    engine = tmp_path / "secret-build-folder" / "engine"
    shutil.copytree(tiny.engine_dir, engine)
    det = Detector.load(engine, threads=1)
    assert Path(det.manifest.source_onnx).is_absolute()  # what the manifest holds
    try:
        with TestClient(create_app(det)) as c:
            model = c.get("/v1/model").json()
            assert model["source_onnx"] == Path(det.manifest.source_onnx).name
            (engine / det.manifest.engine_file).unlink()
            for answer in (c.get("/v1/model"), c.get("/readyz")):
                text = json.dumps(answer.json())
                assert "deleted" in answer.json()["warning"] and det.manifest.engine_file in text
                assert str(tmp_path) not in text and "secret-build-folder" not in text
                assert str(Path(det.manifest.source_onnx).parent) not in text
    finally:
        det.close()
    assert access.without_paths({"a": ["/x/y/z.onnx", "C:\\b\\c.plan", "~/t", "rel/x", "fp16"]}) == {
        "a": ["z.onnx", "c.plan", "t", "rel/x", "fp16"]
    }


# --- the command line, end to end ------------------------------------------------------------
def test_serve_command_with_token_file_and_allowed_hosts(
    tiny: Any, drop_pngs: list[bytes], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    cmd = [sys.executable, "-c", CLI_SCRIPT, "serve", str(tiny.engine_dir), "--port", str(port)]
    cmd += ["--threads", "1", "--log-level", "warning", "--token-file", str(token_file)]
    proc = subprocess.Popen([*cmd, "--allowed-hosts", "crystals.lab"], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc=proc, token=TOKEN)
        assert CrystalRtClient(base, token=TOKEN).detect(drop_pngs[0])["width"] == 200

        def status(headers: dict[str, str]) -> int:
            request = urllib.request.Request(base + "/v1/model", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as exc:
                exc.close()
                return int(exc.code)

        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert status({}) == 401
        assert status({**auth, "Host": "evil.example"}) == 400
        assert status({**auth, "Host": f"crystals.lab:{port}"}) == 200
        assert status({**auth, "Origin": "http://evil.example"}) == 403
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert TOKEN not in log and "Traceback" not in log
