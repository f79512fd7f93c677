"""The arithmetic every stage and kernel shares (no dependency on anything but the spec and numpy).

* the core graph's input and output names;
* the letterbox size and scale, and mapping a network-input box back to the image;
* the normalisation constants (per-channel float32 gain and bias) the CPU and the letterbox kernel use;
* the expanded box of mask pasting, which the CPU paste and the paste kernel's layout share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .spec import PreprocessSpec

#: the core ONNX graph's input and its four fixed-size outputs (DESIGN.md, "Core ONNX contract")
CORE_INPUT = "images"
CORE_OUTPUTS: tuple[str, str, str, str] = ("boxes", "scores", "labels", "masks")

Box = tuple[float, float, float, float]


def letterbox_size(height: int, width: int, size: int) -> tuple[float, int, int]:
    """``(scale, new_w, new_h)``: scale = S / max(H, W), sizes rounded half up, at least 1."""
    scale = size / max(height, width)
    new_w = min(size, max(1, int(width * scale + 0.5)))
    new_h = min(size, max(1, int(height * scale + 0.5)))
    return scale, new_w, new_h


def map_box(box: Sequence[float], scale: float, height: int, width: int) -> Box | None:
    """A network-input box (x1, y1, x2, y2) in image pixels: divided by the letterbox scale and clipped
    to the image; None when nothing of it is in the image (it lies in the letterbox padding)."""
    x1, y1, x2, y2 = (float(v) / scale for v in box)
    mapped = (
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
        min(max(x2, 0.0), float(width)),
        min(max(y2, 0.0), float(height)),
    )
    if mapped[2] <= mapped[0] or mapped[3] <= mapped[1]:
        return None
    return mapped


def normalize_constants(spec: PreprocessSpec, dtype: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """float32 ``gain`` and ``bias`` per channel: ``x * gain + bias`` is ``(x / max - mean) / std``
    with max 255 (uint8) or 65535 (uint16)."""
    max_value = 65535.0 if np.dtype(dtype) == np.uint16 else 255.0
    gains = tuple(float(np.float32(1.0 / (max_value * spec.std[c]))) for c in range(3))
    biases = tuple(float(np.float32(-spec.mean[c] / spec.std[c])) for c in range(3))
    return gains, biases


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
