"""Tiled inference for small crystals in large images: overlapping windows at the engine's native
scale, and the merge of their detections back into one image.

A 2532 x 2028 drop letterboxed to 512 px shrinks ~5x, and crystals of 20-50 px vanish. With tiling,
the recipe's CLAHE still runs once on the whole image (for recipes that start with it; one that
applies CLAHE after the resize applies it per window, as its order says), then windows of the
recipe's resize size (``tile_size`` to choose another) overlapping by ``overlap`` of a window go
through the engine one after another (the core graph has batch 1), each at scale 1, and their
detections are merged (:func:`merge_windows`):

1. duplicates: per label, best first, a detection that no window edge inside the image cuts is
   dropped when its box overlaps one kept from another window by IoU > 0.5 (within a window the
   model's NMS has decided); a cut detection (its box touches such an edge) is dropped when it is
   another window's view of a kept whole one (IoU > 0.5, or its mask lies mostly, > 0.6, inside
   that one's), so a neighbouring window's whole view of a crystal wins;
2. crystals larger than the overlap stay cut in every window: the remaining cut pieces of one label
   from different windows whose masks overlap or touch are joined (mask union, box union, the
   best score);
3. fragments: a detection whose mask lies mostly (>= 0.85 of it) inside a larger one of the same
   label that another window found is a part of that crystal (a window that sees the crystal cut
   by its edge may outline pieces of it that do not touch the edge, with a box IoU far below 0.5):
   it is joined into the larger one. Two detections of one window stay apart (the model decided).

``tiles="auto"`` tiles an image only when fitting it into the engine input would shrink it by more
than ``AUTO_SHRINK`` (1.5x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._lazy import lazy_import
from ..errors import InvalidSpec
from ..geometry import Window
from ..results.detection import Instance, InstanceMask
from ..spec import PreprocessSpec

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "Image processing")


TileMode = Literal["off", "auto", "on"]
TILE_MODES: tuple[str, ...] = ("off", "auto", "on")
AUTO_SHRINK = 1.5
DEFAULT_OVERLAP = 0.25
NMS_IOU = 0.5
CONTAINED = 0.6
#: a detection with this much of its mask inside a larger one from another window is its fragment
FRAGMENT = 0.85


@dataclass(frozen=True)
class Tiling:
    """``mode``: off, on (always tile) or auto (tile when the image would shrink > 1.5x);
    ``tile_size``: the window's side in image pixels (None: the recipe's resize size, scale 1);
    ``overlap``: the fraction of a window shared with its neighbour, in [0, 0.5]."""

    mode: TileMode = "off"
    tile_size: int | None = None
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.mode not in TILE_MODES:
            raise InvalidSpec(f"tiles must be one of {', '.join(TILE_MODES)}, got {self.mode!r}")
        if self.tile_size is not None and not 32 <= int(self.tile_size) <= 16384:
            raise InvalidSpec(f"tile_size must be in 32..16384 pixels, got {self.tile_size}")
        if not 0.0 <= float(self.overlap) <= 0.5:  # also rejects NaN
            raise InvalidSpec(f"overlap must be in [0, 0.5], got {self.overlap}")


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, tile - round(overlap * tile))
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def plan_windows(height: int, width: int, spec: PreprocessSpec, tiling: Tiling | None) -> list[Window] | None:
    """The windows to run, or None for the whole image at once (tiling off, or not needed)."""
    if tiling is None or tiling.mode == "off":
        return None
    th, tw = (tiling.tile_size, tiling.tile_size) if tiling.tile_size else spec.resize.hw
    if tiling.mode == "auto":
        out_h, out_w = spec.resize.hw
        if max(height / out_h, width / out_w) <= AUTO_SHRINK:
            return None
    if height <= th and width <= tw:
        return None
    ys, xs = _starts(height, th, tiling.overlap), _starts(width, tw, tiling.overlap)
    windows = []
    for y in ys:
        for x in xs:
            h, w = min(th, height - y), min(tw, width - x)
            windows.append(Window(x, y, w, h, x > 0, y > 0, x + w < width, y + h < height))
    return windows


@dataclass
class WindowDetection:
    """A detection of one window, in image pixels."""

    instance: Instance
    window: int
    cut: bool  # touches an edge of its window inside the image


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _overlap_pixels(a: InstanceMask, b: InstanceMask, grow: int = 0) -> int:
    """Pixels of ``a`` on (or, with ``grow``, within ``grow`` px of) ``b``."""
    ah, aw = a.crop.shape
    bh, bw = b.crop.shape
    x0, y0 = max(a.x0, b.x0 - grow), max(a.y0, b.y0 - grow)
    x1, y1 = min(a.x0 + aw, b.x0 + bw + grow), min(a.y0 + ah, b.y0 + bh + grow)
    if x0 >= x1 or y0 >= y1:
        return 0
    mine = a.crop[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
    theirs = np.zeros((y1 - y0, x1 - x0), bool)
    sx0, sy0 = max(b.x0, x0), max(b.y0, y0)
    sx1, sy1 = min(b.x0 + bw, x1), min(b.y0 + bh, y1)
    if sx0 < sx1 and sy0 < sy1:
        theirs[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = b.crop[
            sy0 - b.y0 : sy1 - b.y0, sx0 - b.x0 : sx1 - b.x0
        ]
    if grow:
        theirs = cv2.dilate(theirs.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0
    return int(np.count_nonzero(mine & theirs))


def _union(a: Instance, b: Instance) -> Instance:
    ma, mb = a.mask, b.mask
    x0, y0 = min(ma.x0, mb.x0), min(ma.y0, mb.y0)
    x1 = max(ma.x0 + ma.crop.shape[1], mb.x0 + mb.crop.shape[1])
    y1 = max(ma.y0 + ma.crop.shape[0], mb.y0 + mb.crop.shape[0])
    crop = np.zeros((y1 - y0, x1 - x0), bool)
    for m in (ma, mb):
        h, w = m.crop.shape
        crop[m.y0 - y0 : m.y0 - y0 + h, m.x0 - x0 : m.x0 - x0 + w] |= m.crop
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]), max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    best = a if a.score >= b.score else b
    mask = InstanceMask(crop, x0, y0, ma.image_height, ma.image_width)
    return Instance(label=best.label, label_name=best.label_name, score=best.score, box=box, mask=mask)


def _duplicate(det: WindowDetection, of: Sequence[WindowDetection]) -> bool:
    """Whether ``det`` is another window's view of one of ``of``: same label, from another window
    (within one window the model's own NMS has decided), box IoU > 0.5 - or, for a cut piece, its
    mask mostly inside the other's."""
    inst = det.instance
    for other in of:
        o = other.instance
        if other.window == det.window or o.label != inst.label or not _boxes_touch(o.box, inst.box):
            continue
        if _box_iou(o.box, inst.box) > NMS_IOU:
            return True
        area = inst.mask.area  # its own: a large cut piece is not dropped for a fragment inside it
        if det.cut and area and _overlap_pixels(inst.mask, o.mask) > CONTAINED * area:
            return True
    return False


def merge_windows(detections: Sequence[WindowDetection]) -> list[Instance]:
    """One list of instances, best score first, from every window's detections (module doc)."""
    by_score = sorted(detections, key=lambda d: -d.instance.score)
    whole: list[WindowDetection] = []
    for det in by_score:
        if not det.cut and not _duplicate(det, whole):
            whole.append(det)
    pieces = [det for det in by_score if det.cut and not _duplicate(det, whole)]
    found = [(d.instance, frozenset((d.window,))) for d in whole] + _join_cut_pieces(pieces)
    return sorted(_join_fragments(found), key=lambda inst: -inst.score)


def _join_fragments(found: list[tuple[Instance, frozenset[int]]]) -> list[Instance]:
    """Largest first, a detection with >= FRAGMENT of its mask inside a larger kept one of the same
    label is joined into it, unless every window that found it also found the larger one."""
    kept: list[tuple[Instance, frozenset[int]]] = []
    for inst, windows in sorted(found, key=lambda f: -f[0].mask.area):
        area = inst.mask.area
        for k, (big, big_windows) in enumerate(kept):
            if big.label != inst.label or windows <= big_windows or not _boxes_touch(big.box, inst.box):
                continue
            if area and _overlap_pixels(inst.mask, big.mask) >= FRAGMENT * area:
                kept[k] = (_union(big, inst), big_windows)  # the windows that found the crystal
                break
        else:
            kept.append((inst, windows))
    return [inst for inst, _ in kept]


def _boxes_touch(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] + 1 and b[0] <= a[2] + 1 and a[1] <= b[3] + 1 and b[1] <= a[3] + 1


def _join_cut_pieces(pieces: list[WindowDetection]) -> list[tuple[Instance, frozenset[int]]]:
    """Union-find over pieces of one label from different windows whose masks overlap or touch."""
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(pieces):
        for j in range(i + 1, len(pieces)):
            b = pieces[j]
            if a.window == b.window or a.instance.label != b.instance.label:
                continue
            if not _boxes_touch(a.instance.box, b.instance.box):
                continue
            if _overlap_pixels(a.instance.mask, b.instance.mask, grow=1):
                parent[find(i)] = find(j)
    groups: dict[int, tuple[Instance, frozenset[int]]] = {}
    for i, det in enumerate(pieces):
        root = find(i)
        if root in groups:
            inst, windows = groups[root]
            groups[root] = (_union(inst, det.instance), windows | {det.window})
        else:
            groups[root] = (det.instance, frozenset((det.window,)))
    return list(groups.values())


def shift_instance(inst: Instance, window: Window, height: int, width: int) -> Instance:
    """An instance found in ``window`` (window pixels) in image pixels."""
    x1, y1, x2, y2 = inst.box
    box = (x1 + window.x, y1 + window.y, x2 + window.x, y2 + window.y)
    m = inst.mask
    mask = InstanceMask(
        m.crop, m.x0 + window.x if m.crop.size else 0, m.y0 + window.y if m.crop.size else 0, height, width
    )
    return Instance(label=inst.label, label_name=inst.label_name, score=inst.score, box=box, mask=mask)
