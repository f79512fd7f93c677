"""The pipeline, composed once: decoded pixels -> CLAHE -> letterbox + normalise -> engine -> select
-> paste -> instances, with per-stage timings and the device that ran each stage.

Each stage has a CPU implementation (:mod:`.preprocess`, :mod:`.postprocess`) and, where the backend
offers a :class:`~.backends.base.DeviceSession` (a TensorRT engine), a device implementation on the
backend's stream: the raw 8/16-bit image is copied to the device once, CLAHE, letterbox (or stretch)
+ normalise, the engine and the mask paste run there, and only boxes, scores, labels and the pasted
crops come back. A stage the device has no kernel for (16-bit RGB CLAHE) runs on the CPU alone, and
the image is uploaded after it; a recipe whose steps the kernels do not compute (CLAHE after the
resize, min-max intensity, the model's own transform: CHiMP's) is preprocessed on the CPU and its
engine input uploaded. ``stages="cpu"`` runs every stage but the engine on the CPU (parity checks).

Device stage timings come from CUDA events (device time); CPU stages from ``perf_counter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter
from typing import Literal

import numpy as np

from ..errors import InvalidSpec
from ..spec import ModelSpec, PreprocessSpec
from .backends.base import Backend
from .bit_depth import OnceWarnings, fit_bit_depth
from .dispense import dispense_target, has_drop_class
from .postprocess import Kept, make_instances, paste_masks, paste_stage, select_detections
from .preprocess import apply_clahe, check_image, preprocess, recipe_color
from .result import DetectionResult, InstanceMask

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


def check_um_per_px(um_per_px: float | None) -> float | None:
    if um_per_px is None:
        return None
    value = float(um_per_px)
    if not 0.0 < value < 1e6:  # also rejects NaN
        raise InvalidSpec(f"um_per_px must be a positive pixel size in micrometres, got {um_per_px}")
    return value


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
    um_per_px: float | None = None,
    bit_depth: int | None = None,
    warnings: OnceWarnings | None = None,
) -> DetectionResult:
    """Detect instances in decoded ``pixels`` (uint8/uint16, (H, W) or (H, W, 3)); a 16-bit image of
    ``bit_depth`` < 16 significant bits is first expanded to the full range (``.bit_depth``; its time
    counts as decode)."""
    check_image(pixels, name)
    t_bits = perf_counter()
    pixels = fit_bit_depth(pixels, bit_depth, name=name, warnings=warnings)
    decode_ms += (perf_counter() - t_bits) * 1e3
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
        kept = select_detections(outputs.boxes, outputs.scores, threshold, pre.mapping, height, width)

        def cpu_paste(k: Sequence[Kept], h: int, w: int) -> list[InstanceMask]:
            return paste_masks(outputs.masks, k, h, w)

        masks = paste_stage(cpu_paste, outputs.boxes, kept, pre.mapping, height, width, spec.paste_at)
        timings["engine"] = (t1 - t0) * 1e3
        timings["paste"] = (perf_counter() - t1) * 1e3
        scores, labels = outputs.scores, outputs.labels
        devices.update(clahe="cpu", letterbox="cpu", engine=backend.device, paste="cpu")
    else:
        session.begin()
        cpu_ms: dict[str, float] = {}
        if spec.is_paper_shaped:
            pixels = recipe_color(pixels, spec)
            upload: np.ndarray | None = pixels
            if spec.clahe and session.can_clahe(pixels, spec):
                session.clahe(pixels, spec)
                upload = None
                devices["clahe"] = session.device
            elif spec.clahe:
                t0 = perf_counter()
                upload = apply_clahe(pixels, spec.clahe)
                cpu_ms["clahe"] = (perf_counter() - t0) * 1e3
                devices["clahe"] = "cpu"
            mapping = session.letterbox(upload, spec)
            devices["letterbox"] = session.device
        else:  # float steps the kernels do not compute: the CPU makes the input, the device runs the rest
            pre = preprocess(pixels, spec, cpu_ms)
            session.set_input(pre.tensor)
            mapping = pre.mapping
            devices.update(clahe="cpu", letterbox="cpu")
        boxes, scores, labels = session.run_engine()
        t0 = perf_counter()
        kept = select_detections(boxes, scores, threshold, mapping, height, width)
        select_ms = (perf_counter() - t0) * 1e3
        masks = paste_stage(session.paste, boxes, kept, mapping, height, width, spec.paste_at)
        device_ms = session.timings()
        timings.update(device_ms)
        timings.update(cpu_ms)
        timings["letterbox"] = timings.get("letterbox", 0.0) + device_ms.get("upload", 0.0)
        timings["paste"] = timings.get("paste", 0.0) + select_ms
        devices.update(engine=session.device, paste=session.device)
    if not spec.clahe:
        devices["clahe"] = SKIPPED
        timings["clahe"] = 0.0
    instances = make_instances(kept, masks, scores, labels, model.class_names)
    with_dispense = has_drop_class(model.class_names)
    target = dispense_target(instances, height, width, um_per_px) if with_dispense else None
    timings["total"] = decode_ms + (perf_counter() - start) * 1e3
    return DetectionResult(
        width=width,
        height=height,
        instances=instances,
        image=name,
        timings_ms={stage: timings.get(stage, 0.0) for stage in STAGES} | {"total": timings["total"]},
        devices={stage: devices[stage] for stage in STAGES},
        dispense_target=target,
        reports_dispense=with_dispense,
    )
