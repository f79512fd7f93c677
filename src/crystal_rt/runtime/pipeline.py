"""The pipeline, composed once: decoded pixels -> CLAHE -> letterbox + normalise -> engine -> select
-> paste -> instances, with per-stage timings and the device that ran each stage.

Each stage has a CPU implementation (:mod:`.preprocess`, :mod:`.postprocess`) and, where the backend
offers a :class:`~.backends.base.DeviceSession` (a TensorRT engine), a device implementation on the
backend's stream: the raw 8/16-bit image is copied to the device once, CLAHE, letterbox + normalise,
the engine and the mask paste run there, and only boxes, scores, labels and the pasted crops come
back. A stage the device has no kernel for (16-bit RGB CLAHE) runs on the CPU alone, and the image
is uploaded after it. ``stages="cpu"`` runs every stage but the engine on the CPU (parity checks).

Device stage timings come from CUDA events (device time); CPU stages from ``perf_counter``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Literal

import numpy as np

from ..errors import InvalidSpec
from ..spec import ModelSpec, PreprocessSpec
from .backends.base import Backend
from .postprocess import make_instances, paste_masks, select_detections
from .preprocess import apply_clahe, check_image, preprocess
from .result import DetectionResult

#: the stages every result reports (timings_ms adds "total")
STAGES = ("decode", "clahe", "letterbox", "engine", "paste")
StagePolicy = Literal["auto", "cpu"]
STAGE_POLICIES: tuple[str, ...] = ("auto", "cpu")
SKIPPED = "skipped"


def check_stages(stages: str) -> StagePolicy:
    if stages not in STAGE_POLICIES:
        raise InvalidSpec(f"stages must be one of {', '.join(STAGE_POLICIES)}, got {stages!r}")
    return stages  # type: ignore[return-value]


def check_threshold(score_threshold: float, name: str | None = None) -> float:
    threshold = float(score_threshold)
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise InvalidSpec(f"score_threshold must be in [0, 1], got {score_threshold}", path=name)
    return threshold


def run_pipeline(
    pixels: np.ndarray,
    *,
    backend: Backend,
    model: ModelSpec,
    spec: PreprocessSpec,
    score_threshold: float,
    stages: StagePolicy = "auto",
    name: str | None = None,
    decode_ms: float = 0.0,
) -> DetectionResult:
    """Detect instances in decoded ``pixels`` (uint8/uint16, (H, W) or (H, W, 3))."""
    check_image(pixels, name)
    threshold = check_threshold(score_threshold, name)
    height, width = pixels.shape[:2]
    timings: dict[str, float] = {"decode": decode_ms}
    devices = {"decode": "cpu"}
    start = perf_counter()
    session = backend.device_session() if check_stages(stages) == "auto" else None
    if session is None:
        pre = preprocess(pixels, spec, timings)
        t0 = perf_counter()
        outputs = backend.infer(pre.tensor)
        t1 = perf_counter()
        kept = select_detections(outputs.boxes, outputs.scores, threshold, pre.scale, height, width)
        masks = paste_masks(outputs.masks, kept, height, width)
        timings["engine"] = (t1 - t0) * 1e3
        timings["paste"] = (perf_counter() - t1) * 1e3
        scores, labels = outputs.scores, outputs.labels
        devices.update(clahe="cpu", letterbox="cpu", engine=backend.device, paste="cpu")
    else:
        session.begin()
        upload: np.ndarray | None = pixels
        if spec.clahe and session.can_clahe(pixels, spec):
            session.clahe(pixels, spec)
            upload = None
            devices["clahe"] = session.device
        elif spec.clahe:
            t0 = perf_counter()
            upload = apply_clahe(pixels, spec)
            timings["clahe"] = (perf_counter() - t0) * 1e3
            devices["clahe"] = "cpu"
        scale = session.letterbox(upload, spec)
        boxes, scores, labels = session.run_engine()
        t0 = perf_counter()
        kept = select_detections(boxes, scores, threshold, scale, height, width)
        select_ms = (perf_counter() - t0) * 1e3
        masks = session.paste(kept, height, width)
        timings.update(session.timings())
        timings["paste"] = timings.get("paste", 0.0) + select_ms
        devices.update(letterbox=session.device, engine=session.device, paste=session.device)
    if not spec.clahe:
        devices["clahe"] = SKIPPED
        timings["clahe"] = 0.0
    instances = make_instances(kept, masks, scores, labels, model.class_names)
    timings["total"] = decode_ms + (perf_counter() - start) * 1e3
    return DetectionResult(
        width=width,
        height=height,
        instances=instances,
        image=name,
        timings_ms={stage: timings.get(stage, 0.0) for stage in STAGES} | {"total": timings["total"]},
        devices={stage: devices[stage] for stage in STAGES},
    )
