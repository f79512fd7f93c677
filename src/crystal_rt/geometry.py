"""The arithmetic every stage and kernel shares (no dependency on anything but the spec and numpy).

* the core graph's input and output names;
* the resize's size and scales (letterbox or stretch), and mapping a network-input box back to the
  image through every resize of the recipe (:class:`InputMap`);
* the normalisation constants (per-channel float32 gain and bias) the CPU and the letterbox kernel use;
* the expanded box of mask pasting, which the CPU paste and the paste kernel's layout share;
* a window of an image (tiled inference), which the CPU and the device stages crop alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import PreprocessSpec, Resize

#: the core ONNX graph's input and its four fixed-size outputs (docs/contract.md, "Core ONNX contract")
CORE_INPUT = "images"
CORE_OUTPUTS: tuple[str, str, str, str] = ("boxes", "scores", "labels", "masks")

Box = tuple[float, float, float, float]


def letterbox_size(height: int, width: int, size: int | tuple[int, int]) -> tuple[float, int, int]:
    """``(scale, new_w, new_h)`` of a letterbox into S x S (or H x W): scale = min(H / h, W / w),
    sizes rounded half up, at least 1."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    scale = out_h / height if out_h / height < out_w / width else out_w / width
    new_w = min(out_w, max(1, int(width * scale + 0.5)))
    new_h = min(out_h, max(1, int(height * scale + 0.5)))
    return scale, new_w, new_h


@dataclass(frozen=True)
class InputMap:
    """How engine-input pixels map back to the image: ``x_image = (x * ratio_x) / scale_x``.

    ``ratio_x/y`` is the model transform's float32 ratio (torchvision's ``resize_boxes``: resize-step
    size / transformed size; 1 without one), ``scale_x/y`` the resize step's (resized / image size;
    the letterbox's one scale on both axes). ``new_w/new_h`` is the resized image inside the canvas."""

    scale_x: float
    scale_y: float
    new_w: int
    new_h: int
    ratio_x: float = 1.0
    ratio_y: float = 1.0

    @property
    def scale(self) -> float:
        """The letterbox scale (the paper recipe's: both axes alike)."""
        return self.scale_x


def resize_map(height: int, width: int, step: Resize) -> InputMap:
    """The resize step's sizes and scales for an ``height x width`` image."""
    if step.mode == "letterbox":
        scale, new_w, new_h = letterbox_size(height, width, step.hw)
        return InputMap(scale, scale, new_w, new_h)
    return InputMap(step.width / width, step.height / height, step.width, step.height)


def input_map(height: int, width: int, spec: PreprocessSpec) -> InputMap:
    """The whole recipe's :class:`InputMap` for an ``height x width`` image."""
    base = resize_map(height, width, spec.resize)
    if spec.transform is None:
        return base
    (rh, rw), (th, tw) = spec.resize.hw, spec.image_hw
    return InputMap(
        base.scale_x,
        base.scale_y,
        base.new_w,
        base.new_h,
        ratio_x=float(np.float32(rw) / np.float32(tw)),
        ratio_y=float(np.float32(rh) / np.float32(th)),
    )


def map_box(box: Sequence[float], mapping: InputMap | float, height: int, width: int) -> Box | None:
    """A network-input box (x1, y1, x2, y2) in image pixels through ``mapping`` (or a letterbox
    scale), clipped to the image; None when nothing of it is in the image (it lies in the padding)."""
    m = mapping if isinstance(mapping, InputMap) else InputMap(mapping, mapping, 0, 0)
    if m.ratio_x != 1.0 or m.ratio_y != 1.0:  # torchvision's resize_boxes: float32 products
        b = np.asarray(box, dtype=np.float32)
        r = np.array([m.ratio_x, m.ratio_y, m.ratio_x, m.ratio_y], dtype=np.float32)
        box = [float(v) for v in b * r]
    x1, x2 = (float(v) / m.scale_x for v in (box[0], box[2]))
    y1, y2 = (float(v) / m.scale_y for v in (box[1], box[3]))
    mapped = (
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
        min(max(x2, 0.0), float(width)),
        min(max(y2, 0.0), float(height)),
    )
    if mapped[2] <= mapped[0] or mapped[3] <= mapped[1]:
        return None
    return mapped


def map_box_to_resized(box: Sequence[float], mapping: InputMap) -> Box | None:
    """A network-input box in the pixels of the resized image (``new_w x new_h``: torchvision's
    ``resize_boxes`` to the model transform's input), clipped to it; None when empty."""
    b = np.asarray(box, dtype=np.float32)
    r = np.array([mapping.ratio_x, mapping.ratio_y, mapping.ratio_x, mapping.ratio_y], dtype=np.float32)
    x1, y1, x2, y2 = (float(v) for v in b * r)
    w, h = float(mapping.new_w), float(mapping.new_h)
    mapped = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    if mapped[2] <= mapped[0] or mapped[3] <= mapped[1]:
        return None
    return mapped


def nearest_source(n_dst: int, n_src: int) -> np.ndarray:
    """``cv2.resize(..., INTER_NEAREST)``'s source index of each destination index on one axis:
    ``min(floor(d * (1 / (dst / src))), src - 1)`` in double, as OpenCV's resizeNN computes it."""
    ifx = 1.0 / (n_dst / n_src)
    out: np.ndarray = np.minimum(
        np.floor(np.arange(n_dst, dtype=np.float64) * ifx).astype(np.int64), n_src - 1
    )
    return out


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


#: a box within this many pixels of a window edge inside the image touches it (a cut crystal)
EDGE_PX = 2.0


@dataclass(frozen=True)
class Window:
    """A window of the image: (x, y) its top-left, w x h its size; ``inner_*`` whether that edge lies
    inside the image (a neighbouring window continues there)."""

    x: int
    y: int
    w: int
    h: int
    inner_left: bool = False
    inner_top: bool = False
    inner_right: bool = False
    inner_bottom: bool = False

    def touches_inner_edge(self, box: Sequence[float]) -> bool:
        x1, y1, x2, y2 = box
        return (
            (self.inner_left and x1 <= self.x + EDGE_PX)
            or (self.inner_top and y1 <= self.y + EDGE_PX)
            or (self.inner_right and x2 >= self.x + self.w - EDGE_PX)
            or (self.inner_bottom and y2 >= self.y + self.h - EDGE_PX)
        )
