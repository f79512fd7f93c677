"""``crystal-rt bench``: per-stage latency percentiles, engine-only time, cold start, peak RSS,
multi-thread throughput and the environment, written as JSON (and a PNG plot).

Nothing here is imported by ``import crystal_rt`` or ``crystal-rt --help``: the modules import
numpy, OpenCV and ONNX Runtime inside their functions only where they need them.
"""

from __future__ import annotations

__all__ = ["BENCH_SCHEMA", "BENCH_STAGES"]

BENCH_SCHEMA = "crystal-rt-bench/1"
# Detector stages, then encode (result -> JSON text), then the detector's total and the wall time
# of detect + encode measured around the call.
BENCH_STAGES = ("decode", "clahe", "letterbox", "engine", "paste", "encode", "total", "end_to_end")
