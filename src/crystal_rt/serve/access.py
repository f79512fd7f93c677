"""Who may use the HTTP service: a bearer token, the Host header, the Origin header, the bind.

- **Token** (optional): ``--token-file FILE`` or the ``CRYSTAL_RT_TOKEN`` environment variable; every
  request but ``/healthz``, ``/docs`` and ``/openapi.json`` must carry ``Authorization: Bearer TOKEN``
  (compared in constant time, :func:`hmac.compare_digest`), else 401.
- **Bind**: a host other than loopback without a token is refused (:func:`check_bind`) unless
  ``--insecure`` says the network is trusted.
- **Host**: a request whose ``Host`` is not the bind address, ``localhost``, an IP address or a name
  in ``--allowed-hosts`` is refused (400); this stops DNS rebinding, where a web page on a name the
  attacker controls resolves it to this service. A wildcard bind (``0.0.0.0``, ``::``) also allows
  this machine's host names.
- **Origin**: a request from a browser page of another origin (an ``Origin`` header that is not
  this service's own origin, or ``Sec-Fetch-Site: cross-site / same-site`` on a POST) is refused
  (403) before its body is read: a web page on the lab network cannot drive the model with a
  "simple" cross-origin request (a ``text/plain`` POST needs no CORS pre-flight).

All refusals are the service's error JSON. Starlette's ``TrustedHostMiddleware`` is not used: its
refusal is plain text and it cannot allow every IP address (which DNS rebinding cannot forge).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import InvalidOption
from .connections import RateLimitedLog, error_body

TOKEN_ENV = "CRYSTAL_RT_TOKEN"
MIN_TOKEN_LENGTH = 16
#: paths open without the token: liveness for probes, the API's description for a browser
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- the token -------------------------------------------------------------------------------
def check_token(token: str, source: str) -> str:
    """``token`` if it can be a bearer token: printable ASCII without spaces, 16 characters or more."""
    if not token:
        raise InvalidOption(f"the token in {source} is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise InvalidOption(f"the token in {source} must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidOption(
            f"the token in {source} has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}; make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def read_token(
    token_file: str | os.PathLike[str] | None, environ: MutableMapping[str, str] | None = None
) -> str | None:
    """The token from ``token_file`` (its first line, trailing white space removed) or else from
    ``CRYSTAL_RT_TOKEN``; None when neither is given."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidOption("token file not found", path=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidOption(
                f"cannot read the token file: {getattr(exc, 'strerror', None) or exc}", path=path
            ) from None
        lines = text.splitlines()
        return check_token(lines[0].strip() if lines else "", str(path))
    value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    return None if value is None else check_token(value.strip(), TOKEN_ENV)


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``Bearer token`` (constant-time compare)."""
    if header is None:
        return False
    scheme, _, given = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode("ascii"))


# --- the bind --------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another name: it may resolve to any interface


def check_bind(host: str, *, token: str | None, insecure: bool, triton: bool = False) -> None:
    """Refuse a bind beyond loopback without a token (InvalidOption), unless ``insecure``."""
    if is_loopback(host) or insecure or (token is not None and not triton):
        return
    if triton:
        raise InvalidOption(
            f"refusing to serve Triton on {host}: it has no authentication, so anyone who can reach "
            "that address could use it; bind 127.0.0.1, or pass --insecure on a trusted network"
        )
    raise InvalidOption(
        f"refusing to listen on {host} without a token: anyone who can reach that address could use "
        f"the service; give --token-file FILE (or set {TOKEN_ENV}), or pass --insecure on a trusted network"
    )


# --- Host and Origin -------------------------------------------------------------------------
def _split_host(value: str) -> tuple[str, int | None]:
    """(name, port) of a Host header value or an origin's netloc; name lower case, no brackets."""
    value = value.strip()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    else:
        name, port_text = value, ""
    port = int(port_text) if port_text.isdigit() else None
    return name.lower().rstrip("."), port


def allowed_hosts(bind: str, extra: Collection[str] = ()) -> frozenset[str] | None:
    """The names a Host header may carry for a service bound to ``bind`` (IP addresses and
    ``localhost`` are always allowed, see :func:`host_allowed`); None (any) when ``extra`` has ``*``."""
    names = {_split_host(name)[0] for name in extra if name.strip()}
    if "*" in names:
        return None
    bind_name = bind.strip().strip("[]").lower().rstrip(".")
    names.add(bind_name)
    if bind_name in WILDCARD_BINDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def host_allowed(value: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a Host header value may be served: any where ``allowed`` is None, else an IP
    address (which a rebound DNS name cannot forge), ``localhost`` or a name in ``allowed``."""
    if allowed is None or value is None:  # HTTP/1.0 without Host: not a browser
        return True
    name, _ = _split_host(value)
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """Whether a browser's ``Origin`` is this service as the request reached it: the same scheme,
    and the host and port of ``Host`` (behind a local TLS proxy uvicorn takes the scheme from
    ``X-Forwarded-Proto``)."""
    parts = urllib.parse.urlsplit(origin.strip())
    if host is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (a sandboxed page, a file:// page) and anything unparsable
    default = {"http": 80, "https": 443}
    o_name, o_port = _split_host(parts.netloc)
    h_name, h_port = _split_host(host)
    here = (scheme, h_name, h_port or default.get(scheme, 80))
    return (parts.scheme, o_name, o_port or default[parts.scheme]) == here


# --- the middleware --------------------------------------------------------------------------
class AccessGuard:
    """Pure ASGI middleware: Host (400), then Origin (403), then the token (401), before the app
    sees the request (so before a body is read)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        token: str | None,
        hosts: frozenset[str] | None,
    ) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts
        self.refusals = RateLimitedLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)
        host = headers.get(b"host")
        host_text = None if host is None else host.decode("latin-1")
        refusal = self.refusal(scope, headers, host_text)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        client = scope.get("client")
        peer = client[0] if client else "an unknown address"
        self.refusals.warn(f"refused {scope['method']} {scope['path']} from {peer}: {message}")
        body = json.dumps(error_body("AccessDenied", message, None)).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    def refusal(
        self, scope: Scope, headers: dict[bytes, bytes], host: str | None
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, message, extra headers) for a request that must not reach the app, else None."""
        if not host_allowed(host, self.hosts):
            shown = (host or "")[:100]
            return 400, f"Host {shown!r} is not this service's (see crystal-rt serve --allowed-hosts)", []
        origin = None if b"origin" not in headers else headers[b"origin"].decode("latin-1")
        if origin is not None and not same_origin(origin, host, scope.get("scheme", "http")):
            shown = origin[:100]
            return 403, f"cross-origin request refused: Origin {shown!r} is not this service", []
        fetch_site = headers.get(b"sec-fetch-site", b"").lower()
        if scope["method"] not in SAFE_METHODS and fetch_site in (b"cross-site", b"same-site"):
            return 403, f"cross-origin request refused (Sec-Fetch-Site: {fetch_site.decode('latin-1')})", []
        needs_token = self.token is not None and scope["path"] not in OPEN_PATHS
        if needs_token and not bearer_matches(headers.get(b"authorization"), self.token or ""):
            given = b"authorization" in headers
            message = "wrong bearer token" if given else "this service needs a bearer token"
            challenge = b'Bearer realm="crystal-rt"' + (b', error="invalid_token"' if given else b"")
            return 401, f"{message}: send Authorization: Bearer TOKEN", [(b"www-authenticate", challenge)]
        return None


# --- no server paths in answers --------------------------------------------------------------
def _is_absolute_path(text: str) -> bool:
    return text.startswith("~") or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def without_paths(value: Any) -> Any:
    """``value`` (JSON) with every absolute path (a string starting with ``/``, ``~``, ``C:\\`` or
    ``\\\\``) cut to its file name: the answers of ``/v1/model`` show no server paths."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and _is_absolute_path(value):
        windows = PureWindowsPath(value)
        return windows.name if "\\" in value else PurePosixPath(value).name
    return value
