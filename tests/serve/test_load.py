"""Load tests (loopback only): a real `serve` and a hot folder with a restart in the middle.

Two sizes of each: a short one in every run of the suite (`make test`), and a full one (marked
slow, CRYSTAL_RT_SLOW=1; `make slow` runs it in CI). Numbers are printed (run with -s to see them).
Every good answer must equal the in-process detection of the same bytes, instance for instance.
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

#: (bytes, HTTP status, error type) of each bad input, taken in turn: every 6th request, every 4th file.
BAD = [
    (b"plain text, not an image", 422, "InvalidImage"),
    (b"", 422, "InvalidImage"),
    (b"<html><body>not an image</body></html>", 422, "InvalidImage"),
    (png_bytes(np.zeros((64, 64), np.uint8))[:80], 422, "InvalidImage"),  # truncated PNG
    (png_claiming(20000, 20000), 413, "ImageTooLarge"),  # decompression bomb
]

#: (total requests, requests after which the first RSS is read): short in every run (each bad input
#: once), full when slow (`make slow`: sized to stay within CI's time budget; 1000 took 711 s).
HTTP_SIZES = [
    pytest.param(30, 6, id="30-requests"),
    pytest.param(150, 30, id="150-requests", marks=pytest.mark.slow),
]
#: (files, files done before the "restart").
WATCH_SIZES = [
    pytest.param(20, 9, id="20-files"),
    pytest.param(90, 41, id="90-files", marks=pytest.mark.slow),
]
HTTP_BAD_EVERY, WATCH_BAD_EVERY = 6, 4


def _bad(index: int, every: int) -> tuple[bytes, int, str] | None:
    return BAD[(index // every) % len(BAD)] if index % every == every - 1 else None


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


@pytest.mark.parametrize(("total", "warm"), HTTP_SIZES)
def test_http_load_8_clients(tiny: Any, detector: Any, total: int, warm: int) -> None:
    good = [png_bytes(make_drop(100 + i, 120 + 8 * i, 160).image) for i in range(4)]
    expected = [detector.detect(g).to_dict()["instances"] for g in good]
    assert any(expected), "the tiny model finds nothing: the comparison would be empty"
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
    wrong: list[tuple[int, int, str]] = []
    exact = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal exact
        bad = _bad(index, HTTP_BAD_EVERY) is not None
        data, want_status, want_error = _bad(index, HTTP_BAD_EVERY) or (good[index % 4], 200, "")
        status, body = _post(base, data)
        with lock:
            statuses[status] += 1
            if status != want_status:
                wrong.append((index, status, json.dumps(body)[:200]))
            elif bad and body["error"]["type"] != want_error:
                wrong.append((index, status, body["error"]["type"]))
            elif not bad and body["instances"] != expected[index % 4]:
                wrong.append((index, status, "instances differ from the in-process detection"))
            elif not bad:
                exact += 1

    try:
        wait_ready(base, proc=proc)
        t0 = perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(warm)))
            rss_warm = _rss_kib(proc.pid)
            list(pool.map(one, range(warm, total)))
        elapsed = perf_counter() - t0
        rss_end = _rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    fivexx = sum(n for s, n in statuses.items() if s >= 500)
    bad = [_bad(i, HTTP_BAD_EVERY) for i in range(total)]
    num_good = bad.count(None)
    print(
        f"\nHTTP load: {total} requests, 8 clients, {elapsed:.1f} s ({total / elapsed:.1f} req/s); "
        f"statuses {dict(statuses)}; 5xx {fivexx}; exact-equal good answers {exact}/{num_good}; "
        f"RSS {rss_warm / 1024:.1f} MiB at {warm} -> {rss_end / 1024:.1f} MiB at {total} "
        f"({(rss_end - rss_warm) / 1024:+.1f} MiB)"
    )
    assert not wrong, wrong[:5]
    assert fivexx == 0 and sum(statuses.values()) == total
    assert statuses[200] == exact == num_good
    assert statuses[413] == sum(1 for b in bad if b is not None and b[1] == 413) > 0
    assert (rss_end - rss_warm) / 1024 < 50


@pytest.mark.parametrize(("total", "restart"), WATCH_SIZES)
def test_watcher_with_restart(detector: Any, tmp_path: Path, total: int, restart: int) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    images = [png_bytes(make_drop(200 + i, 64, 80).image) for i in range(8)]
    expected = [detector.detect(image).to_dict()["instances"] for image in images]
    assert any(expected), "the tiny model finds nothing: the comparison would be empty"
    bad_names, good_names = set(), {}
    for i in range(total):
        name = f"plate{i // 96}/d{i:03d}.png"
        (in_dir / name).parent.mkdir(exist_ok=True)
        bad = _bad(i, WATCH_BAD_EVERY)
        if bad is not None:
            (in_dir / name).write_bytes(bad[0] or b"x")  # never empty (an empty file waits)
            bad_names.add(name)
        else:
            (in_dir / name).write_bytes(images[i % len(images)])
            good_names[name] = i % len(images)
    opts = WatchOptions(in_dir, out, recursive=True, stable_seconds=0.0, poll_seconds=0.01)
    t0 = perf_counter()
    first = Watcher(detector, opts).run(once=True, max_files=restart)  # "restart" in the middle
    second = Watcher(detector, opts).run(once=True)
    elapsed = perf_counter() - t0
    journal = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    keys = [(e["path"], e["size"], e["mtime_ns"]) for e in journal]
    ok = {e["path"] for e in journal if e["status"] == "ok"}
    quarantined = {e["path"] for e in journal if e["status"] == "quarantined"}
    results = sorted(p.relative_to(out).as_posix() for p in out.glob("plate*/*.png.json"))
    with (out / "points.csv").open() as fh:
        rows = Counter(r["image"] for r in csv.DictReader(fh))
    answers = {name: json.loads((out / f"{name}.json").read_text())["instances"] for name in ok}
    num_bad = len(bad_names)
    print(
        f"\nwatcher: {total} files ({num_bad} bad) in {elapsed:.1f} s; phase 1 {first.done}, phase 2 "
        f"{second.done}; {len(ok)} results, {len(quarantined)} quarantined, "
        f"{len(keys) - len(set(keys))} duplicate journal entries, {sum(rows.values())} points"
    )
    assert first.done == restart and first.done + second.done == total
    assert len(keys) == len(set(keys)) == total  # 0 duplicates
    assert ok == set(good_names) and len(results) == total - num_bad and quarantined == bad_names  # 0 lost
    assert len(list((out / "quarantine").rglob("*.reason.txt"))) == num_bad
    assert {n: a for n, a in answers.items() if a != expected[good_names[n]]} == {}  # exact answers
    assert all(rows.get(name, 0) == len(a) for name, a in answers.items())  # each point exactly once
    assert sum(rows.values()) == sum(len(a) for a in answers.values())
