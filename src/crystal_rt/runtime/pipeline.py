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
from ..geometry import Window
from ..results.detection import DetectionResult, Instance, InstanceMask
from ..results.dispense import dispense_target, has_drop_class
from ..spec import ModelSpec, PreprocessSpec
from .backends.base import Backend, DeviceSession
from .bit_depth import OnceWarnings, fit_bit_depth, to_training_bit_depth
from .postprocess import Kept, make_instances, paste_masks, paste_stage, select_detections
from .preprocess import Preprocessed, apply_clahe, check_image, preprocess, recipe_color
from .tiling import Tiling, WindowDetection, merge_windows, plan_windows, shift_instance

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


class _Run:
    """One image's pass through the stages: the accumulated timings and devices, and whether the
    (enhanced) image is already on the device for the windows to read."""

    def __init__(
        self, backend: Backend, session: DeviceSession | None, spec: PreprocessSpec, threshold: float
    ) -> None:
        self.backend = backend
        self.session = session
        self.spec = spec
        self.threshold = threshold
        # the windows' recipe: without the CLAHE a recipe starts with (it runs once, on the whole image)
        self.window_spec = spec.with_overrides(clahe=False) if spec.clahe_first else spec
        self.on_device = session is not None and self.window_spec.is_paper_shaped
        self.image_on_device = False
        self.cpu_ms: dict[str, float] = {}
        self.devices: dict[str, str] = {"decode": "cpu"}

    def _add_ms(self, stage: str, ms: float) -> None:
        self.cpu_ms[stage] = self.cpu_ms.get(stage, 0.0) + ms

    def enhance(self, image: np.ndarray) -> np.ndarray:
        """CLAHE of a recipe that starts with it, once for the whole image: on the device where the
        device runs the rest and has a kernel for this kind of image, else on the CPU."""
        spec = self.spec
        if spec.clahe is None:
            self.devices["clahe"] = SKIPPED
            return image
        if not spec.clahe_first:  # CLAHE after the resize: each window's preprocessing runs it
            self.devices["clahe"] = "cpu"
            return image
        if self.session is not None and self.on_device and self.session.can_clahe(image, spec):
            self.session.clahe(image, spec)
            self.image_on_device = True
            self.devices["clahe"] = self.session.device
            return image
        t0 = perf_counter()
        enhanced = apply_clahe(image, spec.clahe)
        self._add_ms("clahe", (perf_counter() - t0) * 1e3)
        self.devices["clahe"] = "cpu"
        return enhanced

    def window(self, image: np.ndarray, window: Window | None, class_names: Sequence[str]) -> list[Instance]:
        """Resize + normalise, engine, select and paste of the whole image or one window: instances
        in the window's pixels."""
        spec, session = self.window_spec, self.session
        crop = (
            image
            if window is None
            else np.ascontiguousarray(image[window.y : window.y + window.h, window.x : window.x + window.w])
        )
        height, width = crop.shape[:2]
        if session is None:
            pre = self._cpu_preprocess(crop)
            t0 = perf_counter()
            outputs = self.backend.infer(pre.tensor)
            t1 = perf_counter()
            kept = select_detections(
                outputs.boxes, outputs.scores, self.threshold, pre.mapping, height, width
            )

            def cpu_paste(k: Sequence[Kept], h: int, w: int) -> list[InstanceMask]:
                return paste_masks(outputs.masks, k, h, w)

            masks = paste_stage(cpu_paste, outputs.boxes, kept, pre.mapping, height, width, spec.paste_at)
            self._add_ms("engine", (t1 - t0) * 1e3)
            self._add_ms("paste", (perf_counter() - t1) * 1e3)
            self.devices.update(letterbox="cpu", engine=self.backend.device, paste="cpu")
            return make_instances(kept, masks, outputs.scores, outputs.labels, class_names)
        if self.on_device:
            # the whole recipe (paper-shaped here): the device stages keep one preprocessor per recipe
            mapping = session.letterbox(None if self.image_on_device else image, self.spec, window)
            self.image_on_device = True
            self.devices["letterbox"] = session.device
        else:  # float steps the kernels do not compute: the CPU makes the input, the device runs the rest
            pre = self._cpu_preprocess(crop)
            session.set_input(pre.tensor)
            mapping = pre.mapping
            self.devices["letterbox"] = "cpu"
        boxes, scores, labels = session.run_engine()
        t0 = perf_counter()
        kept = select_detections(boxes, scores, self.threshold, mapping, height, width)
        self._add_ms("paste", (perf_counter() - t0) * 1e3)
        masks = paste_stage(session.paste, boxes, kept, mapping, height, width, spec.paste_at)
        self.devices.update(engine=session.device, paste=session.device)
        return make_instances(kept, masks, scores, labels, class_names)

    def _cpu_preprocess(self, crop: np.ndarray) -> Preprocessed:
        ms: dict[str, float] = {}
        pre = preprocess(crop, self.window_spec, ms)
        self._add_ms("letterbox", ms["letterbox"])
        if self.window_spec.clahe is not None:
            self._add_ms("clahe", ms["clahe"])
        return pre

    def timings(self) -> dict[str, float]:
        out = dict(self.cpu_ms)
        if self.session is not None:
            device_ms = self.session.timings()
            for stage, ms in device_ms.items():
                key = "letterbox" if stage == "upload" else stage
                out[key] = out.get(key, 0.0) + ms
        return out


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
    tiling: Tiling | None = None,
    bit_depth: int | None = None,
    warnings: OnceWarnings | None = None,
) -> DetectionResult:
    """Detect instances in decoded ``pixels`` (uint8/uint16, (H, W) or (H, W, 3)); a 16-bit image of
    ``bit_depth`` < 16 significant bits is first expanded to the full range, then mapped to 8 bits
    when the model was trained on 8-bit images (``spec.training_bit_depth``), on the host before any
    stage or upload (``.bit_depth``; their time counts as decode); with ``tiling``, in overlapping
    windows at the engine's scale, merged (:mod:`.tiling`)."""
    check_image(pixels, name)
    t_bits = perf_counter()
    pixels = fit_bit_depth(pixels, bit_depth, name=name, warnings=warnings)
    pixels = to_training_bit_depth(pixels, spec.training_bit_depth)
    decode_ms += (perf_counter() - t_bits) * 1e3
    threshold = check_threshold(score_threshold, name)
    height, width = pixels.shape[:2]
    start = perf_counter()
    session = backend.device_session() if check_stages(stages) == "auto" else None
    if session is not None:
        session.begin()
    run = _Run(backend, session, spec, threshold)
    windows = plan_windows(height, width, spec, tiling)
    image = run.enhance(recipe_color(pixels, spec))
    if windows is None:
        instances = run.window(image, None, model.class_names)
    else:
        found = []
        for index, window in enumerate(windows):
            for inst in run.window(image, window, model.class_names):
                shifted = shift_instance(inst, window, height, width)
                found.append(WindowDetection(shifted, index, window.touches_inner_edge(shifted.box)))
        instances = merge_windows(found)
    with_dispense = has_drop_class(model.class_names)
    target = dispense_target(instances, height, width, um_per_px) if with_dispense else None
    timings = {"decode": decode_ms, **run.timings()}
    timings["total"] = decode_ms + (perf_counter() - start) * 1e3
    return DetectionResult(
        width=width,
        height=height,
        instances=instances,
        image=name,
        timings_ms={stage: timings.get(stage, 0.0) for stage in STAGES} | {"total": timings["total"]},
        devices={stage: run.devices[stage] for stage in STAGES},
        dispense_target=target,
        reports_dispense=with_dispense,
        windows=0 if windows is None else len(windows),
    )
