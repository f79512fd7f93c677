"""Load tests (loopback only, slow: CRYSTAL_RT_SLOW=1): a real `serve` and a 500-file hot folder.

Numbers are printed (run with -s to see them).
"""

from __future__ import annotations

import csv
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import pytest
from serve_helpers import LOW_THRESHOLD, png_bytes, start_serve_process, wait_ready
from test_bad_inputs import png_claiming

from crystal_rt.data.synthetic import make_drop
from crystal_rt.serve.journal import JOURNAL_NAME
from crystal_rt.serve.watch import Watcher, WatchOptions

pytestmark = pytest.mark.slow

BAD = [
    b"plain text, not an image",
    b"",
    b"<html><body>not an image</body></html>",
    png_bytes(np.zeros((64, 64), np.uint8))[:80],  # truncated PNG
    png_claiming(20000, 20000),  # decompression bomb: 413
]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _post(base: str, data: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(f"{base}/v1/detect", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_http_load_1000_requests_8_clients(tiny: Any, detector: Any) -> None:
    good = [png_bytes(make_drop(100 + i, 120 + 8 * i, 160).image) for i in range(4)]
    expected = [detector.detect(g).to_dict() for g in good]
    proc, base = start_serve_process(
        tiny.engine_dir,
        "--threads",
        "1",
        "--concurrency",
        "2",
        "--queue",
        "64",
        "--score-threshold",
        str(LOW_THRESHOLD),
    )
    statuses: Counter[int] = Counter()
    mismatched: list[int] = []
    exact = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal exact
        bad = index % 10 == 9  # 10 % bad
        data = BAD[(index // 10) % len(BAD)] if bad else good[index % len(good)]
        status, body = _post(base, data)
        with lock:
            statuses[status] += 1
            if not bad:
                want = expected[index % len(good)]
                if status != 200 or body["num_instances"] != want["num_instances"]:
                    mismatched.append(index)
                elif body["instances"] == want["instances"]:
                    exact += 1
            elif status not in (413, 422) or body["error"]["type"] != "InvalidImage":
                mismatched.append(index)

    try:
        wait_ready(base, proc=proc)
        t0 = perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(100)))
            rss_100 = _rss_kib(proc.pid)
            list(pool.map(one, range(100, 1000)))
        elapsed = perf_counter() - t0
        rss_1000 = _rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    fivexx = sum(n for s, n in statuses.items() if s >= 500)
    print(
        f"\nHTTP load: 1000 requests, 8 clients, {elapsed:.1f} s ({1000 / elapsed:.1f} req/s); "
        f"statuses {dict(statuses)}; 5xx {fivexx}; exact-equal good answers {exact}/900; "
        f"RSS {rss_100 / 1024:.1f} MiB at 100 -> {rss_1000 / 1024:.1f} MiB at 1000 "
        f"({(rss_1000 - rss_100) / 1024:+.1f} MiB)"
    )
    assert fivexx == 0 and sum(statuses.values()) == 1000
    assert statuses[200] == 900 and not mismatched
    assert (rss_1000 - rss_100) / 1024 < 50


def test_watcher_500_files_with_restart(detector: Any, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    images = [png_bytes(make_drop(200 + i, 64, 80).image) for i in range(8)]
    bad_names = set()
    for i in range(500):
        name = f"plate{i // 96}/d{i:03d}.png"
        (in_dir / name).parent.mkdir(exist_ok=True)
        if i % 10 == 3:
            (in_dir / name).write_bytes(BAD[(i // 10) % len(BAD)] or b"x")  # 50 bad; never empty (waits)
            bad_names.add(name)
        else:
            (in_dir / name).write_bytes(images[i % len(images)])
    opts = WatchOptions(in_dir, out, recursive=True, stable_seconds=0.0, poll_seconds=0.01)
    t0 = perf_counter()
    first = Watcher(detector, opts).run(once=True, max_files=230)  # "restart" in the middle
    second = Watcher(detector, opts).run(once=True)
    elapsed = perf_counter() - t0
    journal = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    keys = [(e["path"], e["size"], e["mtime_ns"]) for e in journal]
    ok = {e["path"] for e in journal if e["status"] == "ok"}
    quarantined = {e["path"] for e in journal if e["status"] == "quarantined"}
    results = sorted(p.relative_to(out).as_posix() for p in out.glob("plate*/*.png.json"))
    with (out / "points.csv").open() as fh:
        rows = Counter(r["image"] for r in csv.DictReader(fh))
    counts = {name: json.loads((out / f"{name}.json").read_text())["num_instances"] for name in ok}
    print(
        f"\nwatcher: 500 files (50 bad) in {elapsed:.1f} s; phase 1 {first.done}, phase 2 {second.done}; "
        f"{len(ok)} results, {len(quarantined)} quarantined, {len(keys) - len(set(keys))} duplicate journal "
        f"entries, {sum(rows.values())} points"
    )
    assert first.done == 230 and first.done + second.done == 500
    assert len(keys) == len(set(keys)) == 500  # 0 duplicates
    assert len(ok) == 450 and len(results) == 450 and quarantined == bad_names  # 0 lost
    assert len(list((out / "quarantine").rglob("*.reason.txt"))) == 50
    assert all(rows.get(name, 0) == n for name, n in counts.items())  # each image's points exactly once
    assert sum(rows.values()) == sum(counts.values())
