"""Connection limits for the HTTP service that uvicorn does not have.

uvicorn (0.55, h11) drops an idle keep-alive connection after ``timeout_keep_alive`` and refuses
headers over ``h11_max_incomplete_event_size`` (16 KiB) with a 400, but a connection that sends
nothing, or part of its headers, is kept for ever; ``limit_concurrency`` answers 503 to *requests*
yet still accepts every connection. Past the open-file limit, asyncio's accept loop then fails
with ``EMFILE`` and logs a traceback for every failed ``accept()`` (up to ``backlog`` a tick):
1,100 such clients against a limit of 1,024 kept honest requests out for 50+ s and wrote 159,402
tracebacks. :func:`guarded_protocol` makes uvicorn's h11 protocol:

- **time out headers**: a connection must complete a request's headers ``header_timeout`` seconds
  after it opened, or after its last answer was sent (on keep-alive); else it is closed (with a
  JSON 408 when it had sent part of a request). Bodies have their own 408 (``serve.http.read_body``).
- **cap connections** at ``max_connections`` (:func:`connection_limits`: below ``RLIMIT_NOFILE``,
  leaving room for the listen backlog and the files the service opens). A connection past the cap
  closes the oldest connection that is between requests (no complete headers yet, or idle on
  keep-alive); when every connection is busy with a request, the new one is answered 503 and closed.
- **log once, not a traceback each time**: refused, evicted and timed-out connections, and
  ``accept()`` failures (:func:`quiet_accept_errors`), are logged in one line at most once a
  minute, with the count of those not logged.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOption

log = logging.getLogger("crystal_rt.serve")

DEFAULT_HEADER_TIMEOUT = 10.0
MAX_BACKLOG = 128  # the listen queue, and how many connections asyncio accepts in one go
LOG_INTERVAL = 60.0
ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def error_body(kind: str, message: str, source: str | None) -> dict[str, Any]:
    """The service's error JSON: ``{"error": {"type", "message", "input"}}``."""
    return {"error": {"type": kind, "message": message, "input": source}}


def raw_response(status: int, reason: str, kind: str, message: str, extra: str = "") -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 answer with the error JSON, for a connection that
    has no request to answer through h11 (it never finished one)."""
    body = json.dumps(error_body(kind, message, None)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class RateLimitedLog:
    """A warning logged at most once per ``interval`` seconds; the ones in between are counted and
    the count is added to the next line logged."""

    def __init__(self, logger: logging.Logger = log, interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self.last: float | None = None
        self.suppressed = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed and self.last is not None:
            message += f" ({self.suppressed} more since the last such line, {now - self.last:.0f} s ago)"
        self.logger.warning("%s", message)
        self.last, self.suppressed = now, 0


def open_file_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` (None where there is none, or unlimited)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_file_count() -> int:
    """File descriptors this process has open now (0 where that cannot be listed)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(folder)) - 1)  # listdir's own descriptor
        except OSError:
            continue
    return 0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    backlog: int = MAX_BACKLOG
    file_limit: int | None = None  # RLIMIT_NOFILE when the cap was derived from it


def connection_limits(
    max_connections: int | None = None, header_timeout: float = DEFAULT_HEADER_TIMEOUT
) -> ConnectionLimits:
    """The connection cap for this process: the open-file limit less the files open now, the listen
    backlog (asyncio accepts that many in one go; ``limit / 8`` within 16..128) and a reserve
    (``max(8, limit / 32)``) for files opened while serving. ``max_connections`` may lower it;
    asking for more is refused (InvalidOption)."""
    if not header_timeout > 0:
        raise InvalidOption(f"the header timeout must be > 0 seconds, got {header_timeout}")
    limit = open_file_limit()
    if limit is None:
        cap = max_connections or 4096
        return ConnectionLimits(cap, header_timeout, MAX_BACKLOG, None)
    backlog = min(MAX_BACKLOG, max(16, limit // 8))
    reserve = max(8, limit // 32)
    opened = open_file_count()
    room = limit - opened - backlog - reserve
    what = f"the open-file limit {limit} less {opened} open, a backlog of {backlog} and {reserve} in reserve"
    if room < 1:
        raise InvalidOption(f"no room for connections: {what}; raise the limit (ulimit -n)")
    if max_connections is not None and max_connections > room:
        raise InvalidOption(
            f"--max-connections {max_connections} is more than {what} leaves ({room}); "
            "raise the limit (ulimit -n) or lower --max-connections"
        )
    return ConnectionLimits(max_connections or room, header_timeout, backlog, limit)


@contextmanager
def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While open, ``accept()`` failing for want of file descriptors (asyncio logs a traceback per
    failed call, and retries after 1 s) is one rate-limited warning line on ``loop``."""
    previous = loop.get_exception_handler()
    limiter = RateLimitedLog()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS and "accept" in context.get("message", ""):
            limit = open_file_limit()
            limiter.warn(
                f"cannot accept connections: {exc.strerror or exc} (open-file limit {limit}); "
                "asyncio tries again in 1 s"
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


def guarded_protocol(limits: ConnectionLimits, base: type[Any]) -> type[Any]:
    """``base`` (uvicorn's ``H11Protocol`` or a subclass) with the header timeout and the connection
    cap of ``limits``; one class per server (the classes share their server's bookkeeping)."""
    import h11

    # connections between requests, oldest first (a dict keeps insertion order): eviction candidates
    waiting: dict[Any, None] = {}
    closing: set[Any] = set()  # evicted, not yet gone
    refused_log, evicted_log, timeout_log = RateLimitedLog(), RateLimitedLog(), RateLimitedLog()
    cap = limits.max_connections
    why = f" (from the open-file limit {limits.file_limit})" if limits.file_limit else ""

    class GuardedProtocol(base):  # type: ignore[misc,valid-type]
        refused = False
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            open_now = len(self.server_state.connections) - len(closing)
            if open_now >= cap and not self._evict_one():
                self.refused = True
                peer = transport.get_extra_info("peername")
                refused_log.warn(
                    f"refused a connection from {_peer(peer)}: {open_now} connections open, "
                    f"the limit{why} is {cap} and each is busy with a request"
                )
                busy = f"too many connections ({cap}); retry later"
                transport.write(
                    raw_response(503, "Service Unavailable", "BackendUnavailable", busy, "retry-after: 1\r\n")
                )
                transport.close()
                return
            super().connection_made(transport)
            self._between_requests()

        def _evict_one(self) -> bool:
            """Close the connection that has waited longest for a request; False if none is waiting."""
            victim = next(iter(waiting), None)
            if victim is None:
                return False
            victim._served()
            closing.add(victim)
            evicted_log.warn(
                f"closed the connection from {_peer(victim.client)}, which had waited longest for a "
                f"request: {cap} connections open, the limit{why}"
            )
            victim.transport.close()
            return True

        def _between_requests(self) -> None:
            """Between requests: evictable, and the header clock runs (from now, if it was not)."""
            if self.transport.is_closing():
                return
            waiting.setdefault(self, None)
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

        def _served(self) -> None:
            waiting.pop(self, None)
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _update(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self._served()  # a request is being answered: the app's own limits apply
            else:
                self._between_requests()

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            self._served()
            if self.transport.is_closing():
                return
            sent = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
            timeout_log.warn(
                f"closed the connection from {_peer(self.client)}: no complete request headers within "
                f"{limits.header_timeout:g} s{' (part of a request was sent)' if sent else ''}"
            )
            if sent:
                message = f"request headers not complete within {limits.header_timeout:g} s"
                self.transport.write(raw_response(408, "Request Timeout", "CrystalRtError", message))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            super().data_received(data)
            self._update()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._update()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.refused:
                return
            self._served()
            closing.discard(self)
            super().connection_lost(exc)

    return GuardedProtocol


def _peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "an unknown address"
