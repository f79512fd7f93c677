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

from collections.abc import Sequence

import numpy as np

from .backends.base import CoreOutputs
from .preprocess import resize_linear
from .result import Instance, InstanceMask

MASK_THRESHOLD = 0.5


def expanded_box(box: Sequence[float], m: int) -> tuple[int, int, int, int]:
    """(ex1, ey1, ex2, ey2): the box expanded by (M+2)/M about its centre in float32, as torchvision
    computes it, truncated towards zero (``.to(int32)``). The CUDA paste layout uses the same."""
    b = np.asarray(box, dtype=np.float32)
    pad_scale = np.float32((m + 2) / m)
    w_half = (b[2] - b[0]) * np.float32(0.5) * pad_scale
    h_half = (b[3] - b[1]) * np.float32(0.5) * pad_scale
    cx = (b[2] + b[0]) * np.float32(0.5)
    cy = (b[3] + b[1]) * np.float32(0.5)
    ex1, ey1, ex2, ey2 = (int(v) for v in (cx - w_half, cy - h_half, cx + w_half, cy + h_half))
    return ex1, ey1, ex2, ey2


def paste_mask(prob: np.ndarray, box: Sequence[float], height: int, width: int) -> InstanceMask:
    """Binary mask of one instance: ``prob`` (M x M) pasted into ``box`` (x1, y1, x2, y2)."""
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
    crop = resized[y0 - ey1 : ye - ey1, x0 - ex1 : xe - ex1] > MASK_THRESHOLD
    return InstanceMask(crop, x0, y0, height, width)


def select(outputs: CoreOutputs, score_threshold: float) -> np.ndarray:
    """Indices of the real (non-padding) detections with score >= threshold, best first."""
    scores = outputs.scores
    keep = np.flatnonzero((scores > 0.0) & (scores >= score_threshold))
    return keep[np.argsort(-scores[keep], kind="stable")]


def postprocess(
    outputs: CoreOutputs,
    *,
    scale: float,
    height: int,
    width: int,
    score_threshold: float,
    class_names: Sequence[str],
) -> list[Instance]:
    """Instances in original-image pixels, best score first."""
    instances: list[Instance] = []
    for i in select(outputs, score_threshold):
        x1, y1, x2, y2 = (float(v) / scale for v in outputs.boxes[i])
        box = (
            min(max(x1, 0.0), float(width)),
            min(max(y1, 0.0), float(height)),
            min(max(x2, 0.0), float(width)),
            min(max(y2, 0.0), float(height)),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # entirely in the letterbox padding: nothing of it is in the image
        label = int(outputs.labels[i])
        instances.append(
            Instance(
                label=label,
                label_name=class_names[label] if 0 <= label < len(class_names) else str(label),
                score=float(outputs.scores[i]),
                box=box,
                mask=paste_mask(outputs.masks[i], box, height, width),
            )
        )
    return instances
