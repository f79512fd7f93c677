"""Clients that never finish their headers, against a real `crystal-rt serve` on 127.0.0.1 (issue 29,
item 4): N connections each send a request line and one header and stop, under an open-file limit;
then one honest `GET /healthz` (5 s timeout). Prints whether it was answered and how fast, how many
of the slow connections the server closed, and how many lines and tracebacks the server logged.

    python benchmarks/slow_headers.py ENGINE [--limit 1024] [--connections 1100] [--wait 13]

Loopback only, bounded in count and time; the server process is ended at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the head never ends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine")
    parser.add_argument("--limit", type=int, default=1024, help="the server's open-file limit")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--wait", type=float, default=13.0, help="seconds before counting closed ones")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def limit_files() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.limit, hard))

    cmd = [sys.executable, "-m", "crystal_rt.cli.main", "serve", args.engine, "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*cmd, "--log-level", "warning"], stderr=log, preexec_fn=limit_files)  # noqa: PLW1509
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(base + "/readyz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the server did not become ready") from None
                    time.sleep(0.2)
            slow = []
            for _ in range(args.connections):
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.sendall(SLOW_HEAD)
                slow.append(conn)
            time.sleep(0.5)
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as answer:
                    answer.read()
                print(f"honest request answered in {time.monotonic() - t0:.2f} s")
            except OSError as exc:
                print(f"honest request failed after {time.monotonic() - t0:.2f} s: {exc!r}")
            time.sleep(args.wait)
            closed = 0
            for conn in slow:
                conn.settimeout(0.01)
                try:
                    conn.recv(100)
                    closed += 1
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    closed += 1
                conn.close()
            print(f"closed by the server: {closed} of {args.connections}")
        finally:
            proc.terminate()
            proc.wait(10)
        log.seek(0)
        text = log.read().decode(errors="replace")
    print(f"server log: {text.count(os.linesep)} lines, {text.count('Traceback')} tracebacks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
