"""A small client for ``crystal-rt serve`` using only the standard library (urllib).

>>> client = CrystalRtClient("http://127.0.0.1:8080")   # doctest: +SKIP
>>> result = client.detect("drop.png", score_threshold=0.3)   # doctest: +SKIP
>>> result["num_instances"]   # doctest: +SKIP

A service started with a token (``crystal-rt serve --token-file``) needs it:
``CrystalRtClient(url, token=...)``, or the ``CRYSTAL_RT_TOKEN`` environment variable, which the
client reads when no ``token`` is given; it is sent as ``Authorization: Bearer TOKEN``.

An error answer (4xx/5xx) is raised as the :class:`~crystal_rt.errors.CrystalRtError` subclass
the server names (``InvalidImage``, ``InvalidSpec``, ``BackendUnavailable``, ...) with the
server's message; a server that cannot be reached raises ``BackendUnavailable``.

A body is sent in chunks, and the client looks for an answer between chunks: a server that
answers before it has read the whole body (503 busy, 413 for a declared size past its limit, 422
for a bad option) is heard, and its error raised, instead of a connection reset.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import BackendUnavailable, CrystalRtError, InvalidImage, ServiceError
from .access import TOKEN_ENV


def error_from_response(status: int, body: bytes, url: str) -> CrystalRtError:
    """The CrystalRtError an error answer stands for (its class looked up by the ``type`` name)."""
    try:
        info = json.loads(body)["error"]
        kind, message, source = str(info["type"]), str(info["message"]), info.get("input")
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return ServiceError(f"HTTP {status} from {url}: {text or 'no body'}")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, CrystalRtError)) or cls is errors.MissingDependency:
        cls = CrystalRtError
    error = cls(f"{message} (HTTP {status})", path=source if isinstance(source, str) else None)
    error.status = status  # type: ignore[attr-defined]
    return error


class CrystalRtClient:
    """Calls a running ``crystal-rt serve``; one instance may be shared by threads."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8080", *, timeout: float = 60.0, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._auth = {"Authorization": f"Bearer {token.strip()}"} if token else {}

    def __repr__(self) -> str:  # never the token
        return f"CrystalRtClient({self.base_url!r}{', token=...' if self._auth else ''})"

    def _request(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        url = self.base_url + path
        headers = {**self._auth, **(headers or {})}
        if data is not None:
            return self._send_body(method, path, data, headers)
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise error_from_response(exc.code, exc.read(), url) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(url, exc.reason, data) from exc
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(url, exc, data) from exc

    def _send_body(self, method: str, path: str, data: bytes, headers: dict[str, str]) -> Any:
        """``method`` with a body, sent in 64 KiB chunks; an early answer stops the sending."""
        url = self.base_url + path
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendUnavailable(f"not an http(s) URL: {self.base_url}")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout)
        sent = 0
        try:
            try:
                conn.putrequest(method, parts.path.rstrip("/") + path)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    conn.putheader(key, value)
                conn.endheaders()
                view = memoryview(data)
                while sent < len(data):
                    if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                        break  # the server answered (or closed) before reading everything
                    conn.send(view[sent : sent + 65536])
                    sent = min(len(data), sent + 65536)
            except (ConnectionResetError, BrokenPipeError):
                pass  # the answer may be there already: read it below
            except OSError as exc:
                raise self._unreachable(url, exc, None) from exc
            try:
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.HTTPException, OSError) as exc:
                if sent < len(data):
                    raise self._unreachable(url, ConnectionResetError(str(exc)), data) from exc
                raise self._unreachable(url, exc, None) from exc
            if resp.status >= 400:
                raise error_from_response(resp.status, body, url)
            return json.loads(body)
        finally:
            conn.close()

    @staticmethod
    def _unreachable(url: str, reason: object, data: bytes | None) -> CrystalRtError:
        if isinstance(reason, ConnectionResetError | BrokenPipeError) and data:
            return BackendUnavailable(
                f"{url} closed the connection while {len(data)} bytes were sent; the image may be larger "
                "than the server's limit (crystal-rt serve --max-body-mb)"
            )
        return BackendUnavailable(f"cannot reach {url}: {reason}")

    def detect(
        self,
        image: str | os.PathLike[str] | bytes,
        *,
        score_threshold: float | None = None,
        name: str | None = None,
        format: str = "json",
        bit_depth: int | None = None,
    ) -> Any:
        """Detection result JSON (a dict; a list for ``format="coco"``) for a path or encoded bytes;
        ``bit_depth``: the significant bits of a 16-bit image, over the file's and the service's."""
        if isinstance(image, bytes | bytearray):
            data = bytes(image)
        else:
            path = Path(image)
            name = name or path.name
            try:
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise InvalidImage("file not found", path=path) from exc
            except OSError as exc:
                raise InvalidImage(f"cannot read file: {exc.strerror or exc}", path=path) from exc
        query: dict[str, str] = {"format": format}
        if score_threshold is not None:
            query["score_threshold"] = repr(float(score_threshold))
        if name:
            query["name"] = name
        if bit_depth is not None:
            query["bit_depth"] = str(int(bit_depth))
        path_qs = "/v1/detect?" + urllib.parse.urlencode(query)
        return self._request("POST", path_qs, data, {"Content-Type": "application/octet-stream"})

    def model(self) -> Any:
        return self._request("GET", "/v1/model")

    def ready(self) -> bool:
        try:
            self._request("GET", "/readyz")
        except CrystalRtError:
            return False
        return True

    def health(self) -> bool:
        try:
            self._request("GET", "/healthz")
        except CrystalRtError:
            return False
        return True
