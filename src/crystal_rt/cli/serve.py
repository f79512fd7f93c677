"""``crystal-rt serve ENGINE``: the HTTP detection service (uvicorn), on 127.0.0.1 unless --host says so.

POST an image to /v1/detect (raw body or multipart field "image"); /healthz, /readyz, /v1/model;
the OpenAPI page is at /docs. With --token-file (or CRYSTAL_RT_TOKEN) every request but /healthz
and the docs needs "Authorization: Bearer TOKEN"; a --host beyond this machine needs a token (or
--insecure).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from .._lazy import require
from ..console import err_console, info
from ..errors import BackendUnavailable, InvalidOption
from ..serve.access import TOKEN_ENV, allowed_hosts, check_bind, is_loopback, read_token
from ..serve.connections import DEFAULT_HEADER_TIMEOUT, connection_limits
from ..serve.http import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_QUEUE_SIZE,
    create_app,
    server_config,
)
from .options import (
    add_bit_depth,
    add_score_threshold,
    add_stages,
    add_tiling,
    add_um_per_px,
    detector_from_args,
    port,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve an engine over HTTP (POST /v1/detect)", description=__doc__)
    p.add_argument("engine", help="engine folder, NAME.manifest.json, or the DIR/NAME prefix")
    p.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)"
    )
    p.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument(
        "--max-body-mb",
        type=_positive_float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        help="largest request body in MiB (default %(default)g)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image (width x height) accepted, checked before decoding (default %(default)d)",
    )
    p.add_argument("--concurrency", type=_positive_int, default=1, help="images detected at once (default 1)")
    p.add_argument(
        "--queue",
        type=_non_negative_int,
        default=DEFAULT_QUEUE_SIZE,
        help="requests allowed to wait beyond --concurrency before 503 (default %(default)d)",
    )
    p.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=DEFAULT_BODY_TIMEOUT,
        help="seconds a request body may take to start arriving; 408 after (default %(default)g)",
    )
    p.add_argument(
        "--min-body-kbps",
        type=_positive_float,
        default=DEFAULT_MIN_BODY_RATE / 1024,
        help="slowest average body upload after --body-timeout, KiB/s; 408 below it (default %(default)g)",
    )
    p.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a connection may take to send a request's headers; closed after (default %(default)g)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        help="connections open at once (default: what the open-file limit, ulimit -n, leaves room for)",
    )
    access = p.add_argument_group("access (see docs/serving.md, Security)")
    access.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"bearer token (the file's first line; or set {TOKEN_ENV}): requests without "
        "'Authorization: Bearer TOKEN' get 401 (/healthz and the docs stay open)",
    )
    access.add_argument(
        "--allowed-hosts",
        metavar="NAME[,NAME]",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help="host names clients may use in the Host header besides the --host, localhost and IP "
        "addresses (e.g. the machine's DNS name); '*' allows any",
    )
    access.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host beyond this machine without a token (a trusted network only)",
    )
    add_score_threshold(p, "default score threshold, in [0, 1] (default: the engine's)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    triton = p.add_argument_group(
        "Triton (PyTriton: HTTP + gRPC, dynamic batching; needs the triton extra in its own venv)"
    )
    triton.add_argument("--triton", action="store_true", help="serve through a Triton Inference Server")
    triton.add_argument("--model-name", help="Triton model name (default: the engine's name)")
    triton.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC port (default 8001)")
    triton.add_argument("--metrics-port", type=int, default=8002, help="Triton metrics port (default 8002)")
    triton.add_argument("--max-batch", type=_positive_int, default=4, help="dynamic batch size (default 4)")
    add_stages(p)
    add_um_per_px(p)
    add_tiling(p)
    add_bit_depth(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.triton:
        return _run_triton(args)

    uvicorn = require("uvicorn", "crystal-rt serve", extra="serve")
    require("fastapi", "crystal-rt serve", extra="serve")
    token = read_token(args.token_file)  # refusals before the engine is loaded
    check_bind(args.host, token=token, insecure=args.insecure)
    hosts = allowed_hosts(args.host, args.allowed_hosts)
    detector = detector_from_args(args, max_pixels=args.max_pixels)
    try:
        limits = connection_limits(args.max_connections, args.header_timeout)  # after the engine's files
    except InvalidOption:
        detector.close()
        raise
    app = create_app(
        detector,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=args.max_pixels,
        max_concurrency=args.concurrency,
        queue_size=args.queue,
        body_timeout=args.body_timeout,
        min_body_rate=args.min_body_kbps * 1024,
        token=token,
        allowed_hosts=hosts,
    )
    if token is None and not is_loopback(args.host):
        info(f"[yellow]warning:[/] listening on {args.host} without a token (--insecure): no authentication")

    class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            bound = [sock.getsockname() for server in self.servers for sock in server.sockets]
            for address in bound[:1]:  # the port actually bound (--port 0 picks one)
                host = f"[{address[0]}]" if ":" in address[0] else address[0]
                url = f"http://{host}:{address[1]}"
                err_console.print(  # one line (no wrapping): scripts read the URL from it
                    f"serving {escape(repr(detector))} on {url} (docs: /docs); Ctrl-C stops",
                    highlight=False,
                    soft_wrap=True,
                )

    config = server_config(
        app, limits=limits, host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: a normal stop
        pass
    except SystemExit:  # uvicorn could not bind (it logged why)
        if not server.started:
            raise BackendUnavailable(f"cannot listen on {args.host}:{args.port} (address in use?)") from None
        raise
    finally:
        detector.close()
    return 0


def _run_triton(args: argparse.Namespace) -> int:
    from ..serve.pytriton import TritonPorts, bind_triton

    if args.token_file is not None:
        raise InvalidOption("--token-file does not apply to --triton (PyTriton has no authentication)")
    check_bind(args.host, token=None, insecure=args.insecure, triton=True)
    detector = detector_from_args(args, max_pixels=args.max_pixels)
    name = args.model_name or (detector.manifest.name if detector.manifest else "crystals")
    ports = TritonPorts(http=args.port, grpc=args.grpc_port, metrics=args.metrics_port)
    triton = bind_triton(
        detector, model_name=name, host=args.host, ports=ports, max_batch_size=args.max_batch
    )
    if not is_loopback(args.host):
        info(f"[yellow]warning:[/] Triton listens on {args.host} (--insecure): it has no authentication")
    info(
        f"Triton serving model {name!r}: http://{args.host}:{ports.http}/v2/models/{name} , "
        f"gRPC {args.host}:{ports.grpc}; Ctrl-C stops"
    )
    try:
        triton.serve()
    finally:
        detector.close()
    return 0
