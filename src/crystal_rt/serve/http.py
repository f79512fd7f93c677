"""The HTTP service: ``POST /v1/detect``, ``GET /healthz``, ``GET /readyz``, ``GET /v1/model``.

One :class:`~crystal_rt.runtime.detector.Detector` (thread-safe) is shared by a pool of
``max_concurrency`` worker threads; decoding and inference both run there, never on the event
loop. At most ``max_concurrency + queue_size`` detect requests are in flight (running, queued or
still uploading); one more is answered 503 with ``Retry-After`` at once, without reading its body.

The request body is counted while it is read and refused with 413 once it passes
``max_body_bytes``: nothing past the limit is kept, the rest is read and discarded (up to
``max(4 x limit, 64 MiB)``, so that the client can read the 413 instead of seeing a connection
reset) and a larger declared ``Content-Length`` is refused at once; an image whose header claims more
than ``max_pixels`` pixels is refused with 413 before it is decoded. Every failure is JSON::

    {"error": {"type": "InvalidImage", "message": "truncated or corrupt JPEG: ...", "input": "a.jpg"}}

where ``type`` is the name of a :class:`~crystal_rt.errors.CrystalRtError` class: bad input is
4xx (ImageTooLarge 413, InvalidImage 422, InvalidSpec 422 for bad query options), a busy service 503
(BackendUnavailable), only a fault of the service itself is 500. A request uvicorn cannot parse
(garbage bytes, two Content-Length headers) is a JSON 400 too (:func:`server_config`). An image
the service runs out of memory on (``MemoryError``, OpenCV's "Insufficient memory") is 413
``ImageTooLarge: image too large to process here``; a 500's message names the exception type only
(details go to the log, never OpenCV's or Python's source paths).

A body must keep arriving: ``body_timeout`` seconds after the request started, and from then on
at least ``min_body_rate`` bytes per second on average, or the request is answered 408
(``InvalidImage: request body too slow ...``) and its slot is free again; so clients trickling
bytes (slowloris) cannot hold the service. ``/readyz`` answers 503 ``saturated`` while every slot
is taken, so that a load balancer sends requests elsewhere.

The engine stays loaded for the life of the service. When its file on disk is deleted or replaced
(a rebuild), the service keeps serving the loaded engine and says so: ``/readyz`` (still 200) and
``/v1/model`` carry ``"engine_on_disk": "missing"`` or ``"replaced"`` (``"unchanged"`` otherwise) and
a ``warning`` to restart the service to load the new engine (naming the file, never its folder:
no answer shows a server path; ``/v1/model`` cuts every absolute path in the manifest to its file name).

Who may call it (:mod:`crystal_rt.serve.access`): with ``token``, every request but ``/healthz``,
``/docs`` and ``/openapi.json`` needs ``Authorization: Bearer TOKEN`` (401); with ``allowed_hosts``,
a ``Host`` header naming another host is 400; a browser request from another origin is always 403.
Connections (:mod:`crystal_rt.serve.connections`, through :func:`server_config`): request headers
must be complete within ``header_timeout`` seconds, and at most ``max_connections`` are open.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime,
# and those name classes imported inside create_app (fastapi is imported only when an app is made).
import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_import, require
from ..console import printable
from ..errors import (
    BackendUnavailable,
    CrystalRtError,
    ImageTooLarge,
    InvalidImage,
    InvalidSpec,
    ServiceError,
)
from .access import AccessGuard, without_paths
from .connections import (
    ConnectionLimits,
    connection_limits,
    error_body,
    guarded_protocol,
    quiet_accept_errors,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

    from ..runtime.detector import Detector


if TYPE_CHECKING:
    import numpy as np
    import uvicorn
else:
    np = lazy_import("numpy", "Array processing")
    uvicorn = lazy_import("uvicorn", "crystal-rt serve", extra="serve")


log = logging.getLogger("crystal_rt.serve")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 80_000_000  # the decoder's default (io.decode.DEFAULT_MAX_PIXELS), without importing cv2
DEFAULT_QUEUE_SIZE = 8
DRAIN_BYTES = 64 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_MIN_BODY_RATE = 16 * 1024
RETRY_AFTER_SECONDS = 1
FORMATS = ("json", "coco")
BODY_NAME = "<request body>"


class RequestError(Exception):
    """A CrystalRtError together with the HTTP status it is answered with."""

    def __init__(self, status: int, error: CrystalRtError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


def status_for(error: CrystalRtError) -> int:
    """The HTTP status for an error: 4xx for the caller's input, 503 busy, 500 for the service."""
    if isinstance(error, ImageTooLarge):
        return 413
    if isinstance(error, InvalidImage):
        return 422
    if isinstance(error, InvalidSpec):
        return 422
    if isinstance(error, BackendUnavailable):
        return 503
    return 500


#: how long a warm-up call waits for the other worker threads to start (each warms its own thread)
WARMUP_BARRIER_SECONDS = 60.0


def warmup_image(size: int) -> "np.ndarray":
    """A synthetic gray drop (a bright disk with a few dark rectangles) of ``size`` x ``size``."""

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2.0
    img = np.where((yy - centre) ** 2 + (xx - centre) ** 2 < (0.4 * size) ** 2, 180, 60).astype(np.uint8)
    step = max(4, size // 8)
    for k in range(1, 4):
        img[k * step : k * step + step // 2, k * step : k * step + step // 3] = 30
    return img


@dataclass
class ServiceState:
    """Mutated only on the event loop thread (no lock needed)."""

    capacity: int
    in_flight: int = 0
    ready: bool = False
    warmup_error: str | None = None
    warmup_ms: float | None = None
    served: int = 0


def drain_limit(limit: int) -> int:
    """How many bytes of a too-large body are read and discarded before the 413 is sent.

    Answering while the client is still sending makes most clients see a connection reset instead
    of the 413; reading the rest (up to this much) lets them read the answer."""
    return max(4 * limit, DRAIN_BYTES)


async def read_body(
    request: "Request",
    limit: int,
    *,
    timeout: float = DEFAULT_BODY_TIMEOUT,
    min_rate: float = DEFAULT_MIN_BODY_RATE,
) -> bytes:
    """The request body, or 413 once it passes ``limit`` bytes (the rest drained, see drain_limit),
    or 408 when it is too slow: ``total`` bytes must have arrived ``timeout + total / min_rate``
    seconds after the start (so a stalled body waits ``timeout`` at most, a trickle not much more)."""
    declared = request.headers.get("content-length")
    drain = drain_limit(limit)
    if declared is not None and declared.isdigit() and int(declared) > drain:
        raise RequestError(
            413, ImageTooLarge(f"request body of {declared} bytes is larger than {limit} bytes")
        )
    chunks: list[bytes] = []
    total = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = request.stream().__aiter__()
    while True:
        wait = start + timeout + total / min_rate - loop.time()
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(
                408,
                InvalidImage(
                    f"request body too slow: {total} bytes in {loop.time() - start:.1f} s (it must start "
                    f"within {timeout:g} s and then arrive at {min_rate / 1024:g} KiB/s or faster)"
                ),
            ) from None
        total += len(chunk)
        if total <= limit:
            chunks.append(chunk)
        elif total > drain:
            break
    if total > limit:
        raise RequestError(413, ImageTooLarge(f"request body is larger than {limit} bytes"))
    return b"".join(chunks)


async def image_from_body(request: "Request", body: bytes, name: str | None, limit: int) -> tuple[bytes, str]:
    """The encoded image and its name: the multipart file field ``image``, or the raw body."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body, name or BODY_NAME

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=4, max_fields=16, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(422, InvalidImage(f"malformed multipart body: {exc.message}", path=name)) from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestError(
                422, InvalidImage('multipart body has no file field named "image"', path=name or BODY_NAME)
            )
        return await upload.read(), name or upload.filename or BODY_NAME
    finally:
        await form.close()


def engine_file_state(detector: "Detector") -> tuple[str, tuple[int, int, int] | None] | None:
    """The engine's model file and its (size, mtime_ns, inode), None when missing; None without a manifest."""
    manifest = detector.manifest
    if manifest is None or manifest.path is None:
        return None
    path = manifest.path.parent / manifest.engine_file
    try:
        st = path.stat()
    except OSError:
        return str(path), None
    return str(path), (st.st_size, st.st_mtime_ns, st.st_ino)


def sanitised(exc: BaseException) -> CrystalRtError:
    """The error a request gets for an unexpected exception: a too-large image where memory ran
    out, else an internal error naming the exception's type only (no source paths)."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "Insufficient memory" in text or "Failed to allocate" in text:
        return ImageTooLarge("image too large to process here: not enough memory")
    return ServiceError(f"internal error ({type(exc).__name__}); see the service log")


def server_config(app: "FastAPI", *, limits: ConnectionLimits | None = None, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` for ``app``: its 400 for an unparsable request is the JSON error shape,
    and its connections have the header timeout and the cap of ``limits`` (default:
    :func:`~crystal_rt.serve.connections.connection_limits`, from the open-file limit)."""

    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # another uvicorn layout: its own 400s, no header timeout
        return uvicorn.Config(app, **kwargs)

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            import h11

            body = json.dumps(error_body("CrystalRtError", f"malformed HTTP request: {msg}", None)).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    limits = limits or connection_limits()
    kwargs.setdefault("backlog", limits.backlog)
    return uvicorn.Config(app, http=guarded_protocol(limits, JsonErrorH11Protocol), **kwargs)


def create_app(
    detector: "Detector",
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_pixels: int | None = None,
    max_concurrency: int = 1,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    warmup: bool = True,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    min_body_rate: float = DEFAULT_MIN_BODY_RATE,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
) -> "FastAPI":
    """A FastAPI app serving ``detector``; run it with uvicorn (``crystal-rt serve``, or
    ``uvicorn.Server(server_config(app, ...))``). ``token``: the bearer token every request but
    ``/healthz`` and the docs must carry (None: none); ``allowed_hosts``: the host names a ``Host``
    header may give besides IP addresses and ``localhost`` (None: any;
    :func:`crystal_rt.serve.access.allowed_hosts` makes the list for a bind address)."""
    require("fastapi", "The HTTP service", extra="serve")
    require("python_multipart", "The HTTP service (uploads)", package="python-multipart", extra="serve")
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBearer
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from ..io.decode import read_image_info
    from ..io.writers import coco_results

    if max_concurrency < 1 or queue_size < 0 or max_body_bytes < 1:
        raise InvalidSpec("max_concurrency and max_body_bytes must be >= 1, queue_size >= 0")
    if not (body_timeout > 0 and min_body_rate > 0):
        raise InvalidSpec("body_timeout and min_body_rate must be > 0")
    pixel_limit = detector.max_pixels if max_pixels is None else int(max_pixels)
    state = ServiceState(capacity=max_concurrency + queue_size)
    engine_at_start = engine_file_state(detector)

    def engine_report() -> dict[str, Any]:
        """``engine_on_disk`` (unchanged / replaced / missing) and, when it changed, a warning."""
        if engine_at_start is None:
            return {}
        path, before = engine_at_start
        now = engine_file_state(detector)
        after = None if now is None else now[1]
        status = "unchanged" if after == before else "missing" if after is None else "replaced"
        report: dict[str, Any] = {"engine_on_disk": status}
        if status != "unchanged":
            what = "deleted" if status == "missing" else "replaced"
            report["warning"] = (
                f"the engine file {Path(path).name} was {what} after it was loaded; this service still "
                "runs the engine it loaded: restart it to load the file on disk"
            )
        return report

    def new_pool() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="crystal-rt-detect")

    pool = [new_pool()]  # replaced at shutdown, so that the app can be started again (tests)

    def error_response(status: int, error: CrystalRtError, source: str | None = None) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        body = error_body(type(error).__name__, error.message, error.path or source)
        return JSONResponse(body, status_code=status, headers=headers)

    # A device backend keeps per-thread state (CUDA context current, stream, buffers, kernel modules,
    # execution context or ORT session): warm every worker thread, not just the first one, so that no
    # request pays for it. The barrier makes the pool start one thread per warm-up call.
    on_device = getattr(getattr(detector, "backend", None), "device", "cpu") != "cpu"
    workers_to_warm = max_concurrency if on_device else 1
    barrier = threading.Barrier(workers_to_warm)

    def warm() -> float:
        barrier.wait(timeout=WARMUP_BARRIER_SECONDS)
        t0 = perf_counter()
        detector.detect_pixels(warmup_image(max(detector.preprocess.resize.hw)), name="<warmup>")
        return (perf_counter() - t0) * 1e3

    async def warm_all() -> float:
        loop = asyncio.get_running_loop()
        times = await asyncio.gather(*(loop.run_in_executor(pool[0], warm) for _ in range(workers_to_warm)))
        return max(times)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warmup:
            try:
                state.warmup_ms = await warm_all()
            except Exception as exc:  # reported by /readyz; the process stays up for /healthz
                state.warmup_error = (
                    str(exc) if isinstance(exc, CrystalRtError) else f"{type(exc).__name__}: {exc}"
                )
                log.error("warm-up failed: %s", state.warmup_error)
        state.ready = state.warmup_error is None
        try:
            with quiet_accept_errors(asyncio.get_running_loop()):
                yield
        finally:
            old, pool[0] = pool[0], new_pool()
            old.shutdown(wait=True, cancel_futures=True)

    # with a token, the OpenAPI page offers an "Authorize" button (the check is AccessGuard's)
    security = [Depends(HTTPBearer(auto_error=False))] if token is not None else None
    app = FastAPI(
        title="crystal-rt",
        summary="Mask R-CNN segmentation of protein crystals in drop images",
        lifespan=lifespan,
        dependencies=security,
    )
    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.add_middleware(AccessGuard, token=token, hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def bad_options(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return error_response(422, InvalidSpec(f"invalid request option(s): {details}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body("CrystalRtError", str(exc.detail), request.url.path),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    def run_detect(data: bytes, name: str, threshold: float | None, fmt: str, bits: int | None) -> Any:
        t0 = perf_counter()
        image = read_image_info(data, max_pixels=pixel_limit, name=name)
        result = detector.detect_pixels(
            image,
            name=name,
            score_threshold=threshold,
            decode_ms=(perf_counter() - t0) * 1e3,
            bit_depth=bits,
        )
        return coco_results([result]) if fmt == "coco" else result.to_dict()

    @app.post("/v1/detect", summary="Detect crystals in one image (multipart field 'image' or raw body)")
    async def detect(
        request: Request,
        score_threshold: float | None = None,
        format: str = "json",
        name: str | None = None,
        bit_depth: int | None = None,
    ) -> JSONResponse:
        if state.in_flight >= state.capacity:
            busy = BackendUnavailable(
                f"busy: {state.in_flight} requests in flight (limit {state.capacity}); retry later"
            )
            return error_response(503, busy)
        state.in_flight += 1
        source = name
        try:
            if format not in FORMATS:
                raise RequestError(
                    422, InvalidSpec(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
                )
            if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
                raise RequestError(
                    422, InvalidSpec(f"score_threshold must be in [0, 1], got {score_threshold}")
                )
            if bit_depth is not None and not 1 <= bit_depth <= 16:
                raise RequestError(422, InvalidSpec(f"bit_depth must be in 1..16, got {bit_depth}"))
            body = await read_body(request, max_body_bytes, timeout=body_timeout, min_rate=min_body_rate)
            data, source = await image_from_body(request, body, name, max_body_bytes)
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(
                pool[0], run_detect, data, source, score_threshold, format, bit_depth
            )
            state.served += 1
            return JSONResponse(payload)
        except RequestError as exc:
            return error_response(exc.status, exc.error, source)
        except ClientDisconnect:  # the caller went away mid-upload: nobody reads this answer
            return error_response(400, InvalidImage("the client disconnected during the upload"), source)
        except CrystalRtError as exc:
            status = status_for(exc)
            if status >= 500:
                log.error("detect failed: %s", printable(exc))  # the name is the client's
            return error_response(status, exc, source)
        except Exception as exc:  # a fault of the service (or memory): a sanitised answer, keep serving
            log.exception("unexpected error in /v1/detect")
            error = sanitised(exc)
            return error_response(status_for(error), error, source)
        finally:
            state.in_flight -= 1

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the engine is loaded and warmed up")
    async def readyz() -> JSONResponse:
        if state.ready and state.in_flight >= state.capacity:
            return error_response(
                503,
                BackendUnavailable(
                    f"saturated: {state.in_flight} requests in flight (limit {state.capacity}); retry later"
                ),
            )
        if state.ready:
            return JSONResponse(
                {
                    "status": "ready",
                    "warmup_ms": state.warmup_ms,
                    "in_flight": state.in_flight,
                    "capacity": state.capacity,
                    **engine_report(),
                }
            )
        if state.warmup_error is not None:
            return error_response(503, BackendUnavailable(f"warm-up failed: {state.warmup_error}"))
        return error_response(503, BackendUnavailable("warming up"))

    @app.get("/v1/model", summary="The engine manifest (or model and preprocessing specs)")
    async def model() -> dict[str, Any]:
        if detector.manifest is not None:
            return {**without_paths(detector.manifest.to_dict()), **engine_report()}
        specs = {
            "backend": detector.backend.name,
            "model": detector.model.to_dict(),
            "preprocess": detector.preprocess.to_dict(),
        }
        return {key: without_paths(value) for key, value in specs.items()}

    app.state.service = state
    return app
