"""Postprocessing contract: select detections, map boxes back, paste 28x28 masks at full resolution.

Mask pasting follows torchvision's ``paste_masks_in_image(masks, boxes, (H, W), padding=1)``:
the 28x28 probability map is zero-padded to 30x30, the box is expanded by 30/28 about its centre
and truncated to integers, the map is resized bilinearly (half-pixel centres, as
``F.interpolate(..., align_corners=False)``) to the expanded box and placed, clipped to the
image. It is computed only inside that box and thresholded there (``prob > 0.5``): a pixel at
exactly 0.5 is background. OpenCV's float bilinear resize and PyTorch's differ in the last bit,
so a pixel whose probability is within ~1e-6 of 0.5 can flip between the two. The resize is
OpenCV's own code (``preprocess.resize_linear``, never Intel IPP), which the CUDA paste kernel
reproduces pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import Box, InputMap, expanded_box, map_box, map_box_to_resized, nearest_source
from ..results.detection import Instance, InstanceMask
from .backends.base import CoreOutputs
from .preprocess import resize_linear

MASK_THRESHOLD = 0.5

__all__ = [
    "MASK_THRESHOLD",
    "Kept",
    "expanded_box",
    "make_instances",
    "nearest_to_image",
    "paste_mask",
    "paste_masks",
    "paste_stage",
    "postprocess",
    "resized_frame",
    "select",
    "select_detections",
]


@dataclass(frozen=True)
class Kept:
    """A detection that passed selection: its row in the engine's outputs and its box in image pixels."""

    index: int
    box: Box


def paste_mask(
    prob: np.ndarray, box: Sequence[float], height: int, width: int, threshold: float = MASK_THRESHOLD
) -> InstanceMask:
    """Binary mask of one instance: ``prob`` (M x M) pasted into ``box`` (x1, y1, x2, y2), the pixels
    whose probability is above ``threshold`` (the contract's 0.5; parity checks paste at others)."""
    m = prob.shape[-1]
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = prob
    ex1, ey1, ex2, ey2 = expanded_box(box, m)
    box_w = max(ex2 - ex1 + 1, 1)
    box_h = max(ey2 - ey1 + 1, 1)
    x0, y0 = max(ex1, 0), max(ey1, 0)
    xe, ye = min(ex2 + 1, width), min(ey2 + 1, height)
    if xe <= x0 or ye <= y0:
        return InstanceMask(np.zeros((0, 0), dtype=bool), 0, 0, height, width)
    resized = resize_linear(padded, box_w, box_h)
    crop = resized[y0 - ey1 : ye - ey1, x0 - ex1 : xe - ex1] > threshold
    return InstanceMask(crop, x0, y0, height, width)


def paste_masks(masks: np.ndarray, kept: Sequence[Kept], height: int, width: int) -> list[InstanceMask]:
    """The CPU paste stage: each kept detection's M x M map pasted into its box."""
    return [paste_mask(masks[k.index], k.box, height, width) for k in kept]


def resized_frame(boxes: np.ndarray, kept: Sequence[Kept], mapping: InputMap) -> tuple[list[Kept], int, int]:
    """For a recipe that pastes at the resized size (``paste_at="resize"``): each kept detection's
    box in the resized image's pixels, and that image's height and width."""
    frame = []
    for k in kept:
        box = map_box_to_resized(boxes[k.index], mapping)
        frame.append(Kept(k.index, box if box is not None else (0.0, 0.0, 0.0, 0.0)))
    return frame, mapping.new_h, mapping.new_w


def nearest_to_image(mask: InstanceMask, height: int, width: int) -> InstanceMask:
    """A mask pasted in the resized image, scaled to ``height x width`` by nearest neighbour exactly
    as ``cv2.resize(full_mask, (width, height), interpolation=cv2.INTER_NEAREST)`` would (computed
    on the crop only)."""
    ch, cw = mask.crop.shape
    if ch == 0 or cw == 0 or not mask.crop.any():
        return InstanceMask(np.zeros((0, 0), dtype=bool), 0, 0, height, width)
    sy = nearest_source(height, mask.image_height)
    sx = nearest_source(width, mask.image_width)
    ys = np.flatnonzero((sy >= mask.y0) & (sy < mask.y0 + ch))
    xs = np.flatnonzero((sx >= mask.x0) & (sx < mask.x0 + cw))
    if ys.size == 0 or xs.size == 0:
        return InstanceMask(np.zeros((0, 0), dtype=bool), 0, 0, height, width)
    crop = mask.crop[(sy[ys] - mask.y0)[:, None], (sx[xs] - mask.x0)[None, :]]
    return InstanceMask(np.ascontiguousarray(crop), int(xs[0]), int(ys[0]), height, width)


def select(scores: np.ndarray, score_threshold: float) -> np.ndarray:
    """Indices of the real (non-padding) detections with score >= threshold, best first."""
    keep = np.flatnonzero((scores > 0.0) & (scores >= score_threshold))
    return keep[np.argsort(-scores[keep], kind="stable")]


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float,
    mapping: InputMap | float,
    height: int,
    width: int,
) -> list[Kept]:
    """The detections to report, best score first, with their boxes in image pixels (``mapping``: the
    recipe's :class:`~crystal_rt.geometry.InputMap`, or a letterbox scale); a box that lies entirely
    in the padding has nothing in the image and is dropped."""
    kept = []
    for i in select(scores, score_threshold):
        box = map_box(boxes[i], mapping, height, width)
        if box is not None:
            kept.append(Kept(int(i), box))
    return kept


def make_instances(
    kept: Sequence[Kept],
    masks: Sequence[InstanceMask],
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> list[Instance]:
    instances = []
    for k, mask in zip(kept, masks, strict=True):
        label = int(labels[k.index])
        instances.append(
            Instance(
                label=label,
                label_name=class_names[label] if 0 <= label < len(class_names) else str(label),
                score=float(scores[k.index]),
                box=k.box,
                mask=mask,
            )
        )
    return instances


Paster = Callable[[Sequence[Kept], int, int], list[InstanceMask]]


def paste_stage(
    paste: Paster,
    boxes: np.ndarray,
    kept: Sequence[Kept],
    mapping: InputMap | float,
    height: int,
    width: int,
    paste_at: str = "image",
) -> list[InstanceMask]:
    """The paste stage with ``paste`` (the CPU's or a device's): at the image's resolution, or, for a
    recipe with ``paste_at="resize"``, in the resized image and then nearest to the image's."""
    if paste_at == "resize" and isinstance(mapping, InputMap):
        frame, frame_h, frame_w = resized_frame(boxes, kept, mapping)
        return [nearest_to_image(m, height, width) for m in paste(frame, frame_h, frame_w)]
    return paste(kept, height, width)


def postprocess(
    outputs: CoreOutputs,
    *,
    scale: InputMap | float,
    height: int,
    width: int,
    score_threshold: float,
    class_names: Sequence[str],
    paste_at: str = "image",
) -> list[Instance]:
    """The CPU postprocessing: instances in original-image pixels, best score first."""
    kept = select_detections(outputs.boxes, outputs.scores, score_threshold, scale, height, width)

    def paste(k: Sequence[Kept], h: int, w: int) -> list[InstanceMask]:
        return paste_masks(outputs.masks, k, h, w)

    masks = paste_stage(paste, outputs.boxes, kept, scale, height, width, paste_at)
    return make_instances(kept, masks, outputs.scores, outputs.labels, class_names)
