"""The measurements behind ``crystal-rt bench``.

- **Latency** (per stage and end to end): each image's encoded bytes are held in memory and
  passed to ``Detector.detect`` (decode, CLAHE, letterbox, engine, paste), then the result is
  encoded to JSON text (``encode``); ``end_to_end`` is the wall time of detect + encode measured
  around the call. ``warmup`` untimed passes over the images, then ``runs`` timed passes.
- **Engine only**: ``backend.infer`` on one fixed, already preprocessed [1, 3, S, S] tensor, with
  no decode, CLAHE, letterbox or paste around it (like ``trtexec --noDataTransfers``).
- **Cold start**: a fresh ``python -c`` child imports crystal_rt, loads the engine, detects one
  image and prints a line; the parent times from just before spawning it to that line's arrival
  (so interpreter start-up, imports, session creation and the first, un-warmed detection all
  count). The child also reports its own peak RSS (``ru_maxrss``), whether torch was imported
  (it never is on this path) and its age from the kernel's process start time.
- **Throughput**: for each W in the sweep, one Detector whose ONNX Runtime session has
  ``max(1, cores // W)`` intra-op threads (so W x intra-op ~= cores: more would oversubscribe the
  cores, fewer would leave them idle), called by W Python threads at once; images/s = images /
  wall time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InferenceError, InvalidOption, OutputNotWritten
from . import BENCH_SCHEMA, BENCH_STAGES
from .environment import collect_environment, gpu_memory_mb, usable_cores
from .stats import summarize

if TYPE_CHECKING:
    from ..runtime.pipeline import StagePolicy
    from ..runtime.tiling import Tiling

import datetime as dt
import resource
import shutil
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

from .._lazy import lazy_import
from ..runtime.artifacts import Manifest, resolve_manifest

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "Image processing")


COLD_MARK = "CRYSTAL_RT_COLD "

# Runs in the cold-start child: imports, load, first detection, then one line of JSON.
COLD_START_CODE = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from crystal_rt import Detector
from crystal_rt.testing import simulated_gpu_from_env
t1 = time.perf_counter()
with simulated_gpu_from_env():
    bits = int(sys.argv[5]) or None
    det = Detector.load(sys.argv[1], threads=int(sys.argv[3]) or None, stages=sys.argv[4], bit_depth=bits)
    t2 = time.perf_counter()
    result = det.detect(sys.argv[2])
    text = result.to_json()
    t3 = time.perf_counter()
    det.close()
age = None
try:
    with open("/proc/self/stat") as f:
        start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        age = float(f.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
except (OSError, ValueError, IndexError):
    pass
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024
gpu_mb = None
if os.environ.get("CRYSTAL_RT_BENCH_GPU") == "1":
    from crystal_rt.bench.environment import gpu_memory_mb
    gpu_mb = gpu_memory_mb(os.getpid())
print("CRYSTAL_RT_COLD " + json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1, "first_detect_s": t3 - t2, "in_process_s": t3 - t0,
    "process_age_s": age, "peak_rss_mb": rss_mb, "gpu_memory_mb": gpu_mb,
    "torch_imported": "torch" in sys.modules, "instances": len(result.instances),
}), flush=True)
"""


@dataclass
class BenchImage:
    """One benchmark input: its encoded bytes, held in memory."""

    name: str
    data: bytes
    width: int
    height: int
    path: Path | None = None


@dataclass
class BenchConfig:
    engine: Path
    images: list[BenchImage]
    runs: int = 10
    warmup: int = 2
    threads: int | None = None  # ORT intra-op threads for the latency runs (None: all cores)
    threads_sweep: list[int] = field(default_factory=list)
    cold_starts: int = 3
    score_threshold: float | None = None
    stages: StagePolicy = "auto"  # where CLAHE, letterbox and paste run (runtime.pipeline)
    tiling: Tiling | None = None  # tiled inference (runtime.tiling) for the latency runs
    bit_depth: int | None = None  # significant bits of 16-bit images (runtime.bit_depth)
    command: list[str] = field(default_factory=list)
    log: Callable[[str], None] | None = None


def load_images(paths: Sequence[str | os.PathLike[str]]) -> list[BenchImage]:
    """Image files (and folders of images) read into memory, with their sizes."""
    from ..io.decode import list_images, read_image

    images = []
    for path in list_images(paths):
        data = path.read_bytes()
        pixels = read_image(data, name=str(path))
        images.append(BenchImage(path.name, data, int(pixels.shape[1]), int(pixels.shape[0]), path))
    return images


def synthetic_images(count: int, height: int = 1024, width: int = 1224, seed: int = 0) -> list[BenchImage]:
    """``count`` synthetic RGB 8-bit drops (up to 12 crystals each), PNG-encoded in memory."""

    from ..data.synthetic import make_drop

    images = []
    for i in range(count):
        drop = make_drop(seed + i, height, width, 12, rgb=True, bit_depth=8)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(drop.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OutputNotWritten("could not encode a synthetic drop as PNG")
        images.append(BenchImage(f"synthetic-{seed + i}.png", buf.tobytes(), width, height))
    return images


def peak_rss_mb() -> float:
    """This process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``), MiB."""

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) / (1024 * 1024) if sys.platform == "darwin" else float(rss) / 1024


def measure_latency(det: Any, images: Sequence[BenchImage], runs: int, warmup: int) -> dict[str, Any]:
    """Per-stage samples (ms) over ``runs`` passes after ``warmup`` passes; detections per image."""

    samples: dict[str, list[float]] = {stage: [] for stage in BENCH_STAGES}
    detections: dict[str, int] = {}
    devices: dict[str, dict[str, str]] = {}
    for i in range(warmup + runs):
        for image in images:
            t0 = perf_counter()
            result = det.detect(image.data, name=image.name)
            t1 = perf_counter()
            result.to_json()
            t2 = perf_counter()
            detections[image.name] = len(result.instances)
            devices[image.name] = dict(result.devices)
            if i < warmup:
                continue
            for stage in BENCH_STAGES[:5]:
                samples[stage].append(float(result.timings_ms.get(stage, 0.0)))
            samples["encode"].append((t2 - t1) * 1e3)
            samples["total"].append(float(result.timings_ms["total"]))
            samples["end_to_end"].append((t2 - t0) * 1e3)
    return {"samples_ms": samples, "detections": detections, "devices": devices}


def measure_engine_only(det: Any, image: BenchImage, iterations: int, warmup: int) -> list[float]:
    """``backend.infer`` on one fixed preprocessed tensor (no decode/pre/post-processing), ms."""

    from ..io.decode import read_image
    from ..runtime.preprocess import preprocess

    tensor = preprocess(read_image(image.data, name=image.name), det.preprocess).tensor
    for _ in range(warmup):
        det.backend.infer(tensor)
    times = []
    for _ in range(iterations):
        t0 = perf_counter()
        det.backend.infer(tensor)
        times.append((perf_counter() - t0) * 1e3)
    return times


def measure_throughput(
    engine: Path,
    images: Sequence[BenchImage],
    workers: int,
    jobs: int,
    *,
    cores: int,
    score_threshold: float | None = None,
    stages: StagePolicy = "auto",
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """``workers`` threads calling one Detector (intra-op threads = max(1, cores // workers))."""

    from ..runtime.detector import Detector

    intra = max(1, cores // workers)
    jobs = max(jobs, workers)

    with Detector.load(
        engine, threads=intra, score_threshold=score_threshold, stages=stages, bit_depth=bit_depth
    ) as det:

        def one(index: int) -> int:
            image = images[index % len(images)]
            result = det.detect(image.data, name=image.name)
            result.to_json()
            return len(result.instances)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(workers)))  # warm-up: every thread once
            t0 = perf_counter()
            list(pool.map(one, range(jobs)))
            seconds = perf_counter() - t0
    return {
        "workers": workers,
        "intra_op_threads": intra,
        "images": jobs,
        "seconds": seconds,
        "images_per_s": jobs / seconds if seconds > 0 else float("nan"),
        "ms_per_image": seconds * 1e3 / jobs,
    }


def _child_env() -> dict[str, str]:
    """The parent's environment with this crystal_rt's source root first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["CRYSTAL_RT_BENCH_GPU"] = "1" if collect_gpus_present() else "0"
    return env


def collect_gpus_present() -> bool:
    return shutil.which("nvidia-smi") is not None


def cold_start(
    engine: Path,
    image: Path,
    *,
    threads: int | None = None,
    stages: StagePolicy = "auto",
    bit_depth: int | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Spawn a fresh interpreter that imports crystal_rt, loads ``engine`` and detects ``image``.

    ``spawn_to_result_s`` runs from just before the spawn to the arrival of the child's result line.
    """

    env = _child_env()
    argv = [sys.executable, "-c", COLD_START_CODE, str(engine), str(image), str(threads or 0), stages]
    argv.append(str(bit_depth or 0))
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        line = ""
        assert proc.stdout is not None
        for raw in proc.stdout:
            if raw.startswith(COLD_MARK):
                line = raw
                break
        elapsed = time.perf_counter() - t0
        try:
            proc.stdout.read()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not line:
            err.seek(0)
            tail = err.read().strip().splitlines()[-3:]
            raise InferenceError(f"the cold-start child failed (exit {proc.returncode}): {' | '.join(tail)}")
    child: dict[str, Any] = json.loads(line[len(COLD_MARK) :])
    return {"spawn_to_result_s": elapsed, **child}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """All measurements for one engine; returns the JSON-ready report."""

    from ..runtime.detector import Detector

    say = config.log or (lambda _msg: None)
    if not config.images:
        raise InvalidOption("no images to benchmark")
    manifest = Manifest.read(resolve_manifest(config.engine))
    cores = usable_cores()
    report: dict[str, Any] = {
        "schema": BENCH_SCHEMA,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(config.command),
        "engine": str(config.engine),
        "images": [
            {"name": im.name, "width": im.width, "height": im.height, "bytes": len(im.data)}
            for im in config.images
        ],
        "runs": config.runs,
        "warmup": config.warmup,
        "threads": config.threads or cores,
        "stage_policy": config.stages,
        "tiling": None if config.tiling is None else dataclasses.asdict(config.tiling),
    }

    # cold start first, while this process is idle (the child has the cores to itself)
    cold: dict[str, Any] = {"runs": []}
    if config.cold_starts > 0:
        with tempfile.TemporaryDirectory(prefix="crystal-rt-bench-") as tmp:
            first = config.images[0]
            path = first.path or Path(tmp) / first.name
            if first.path is None:
                path.write_bytes(first.data)
            for i in range(config.cold_starts):
                say(f"cold start {i + 1}/{config.cold_starts}")
                cold["runs"].append(
                    cold_start(
                        config.engine,
                        path,
                        threads=config.threads,
                        stages=config.stages,
                        bit_depth=config.bit_depth,
                    )
                )
        spawn = [r["spawn_to_result_s"] for r in cold["runs"]]
        cold["spawn_to_result_s"] = summarize(spawn)
        cold["in_process_s"] = summarize([r["in_process_s"] for r in cold["runs"]])
        cold["peak_rss_mb"] = max(r["peak_rss_mb"] for r in cold["runs"])
        cold["torch_imported"] = any(r["torch_imported"] for r in cold["runs"])
    report["cold_start"] = cold

    say(f"latency: {config.warmup} warm-up + {config.runs} timed passes over {len(config.images)} image(s)")
    with Detector.load(
        config.engine,
        threads=config.threads,
        score_threshold=config.score_threshold,
        stages=config.stages,
        tiling=config.tiling,
        bit_depth=config.bit_depth,
    ) as det:
        latency = measure_latency(det, config.images, config.runs, config.warmup)
        say("engine only")
        engine_ms = measure_engine_only(
            det, config.images[0], config.runs * len(config.images), max(1, config.warmup)
        )
        gpu_mb = gpu_memory_mb(os.getpid())
    report["stages"] = {k: summarize(v) for k, v in latency["samples_ms"].items()}
    report["samples_ms"] = latency["samples_ms"]
    report["detections"] = latency["detections"]
    report["devices"] = latency["devices"]  # which device ran each stage, per image
    report["engine_only"] = {**summarize(engine_ms), "samples_ms": engine_ms, "image": config.images[0].name}

    sweep = []
    for workers in config.threads_sweep:
        say(f"throughput: {workers} thread(s)")
        sweep.append(
            measure_throughput(
                config.engine,
                config.images,
                workers,
                max(config.runs * len(config.images), 2 * workers),
                cores=cores,
                score_threshold=config.score_threshold,
                stages=config.stages,
                bit_depth=config.bit_depth,
            )
        )
    report["throughput"] = sweep
    report["memory"] = {
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "cold_start_peak_rss_mb": cold.get("peak_rss_mb"),
        "gpu_memory_mb": gpu_mb,
        "gpu": "measured" if gpu_mb is not None else "skipped: no NVIDIA GPU (nvidia-smi not found)",
    }
    report["environment"] = collect_environment(manifest.to_dict())
    return report
