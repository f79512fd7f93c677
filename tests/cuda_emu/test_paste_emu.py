"""kernels/paste.cu through the CPU emulator: equals postprocess.paste_mask pixel for pixel.

The layout (expanded boxes, crops, offsets) comes from crystal_rt.cuda.launches.paste_layout, the
launch from paste_launch. Reference: paste_mask, whose float resize is OpenCV's own code (never
Intel IPP, see preprocess.resize_linear), as on ARM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_rt.cuda.launches import PasteLayout, paste_launch, paste_layout
from crystal_rt.runtime.postprocess import paste_mask
from crystal_rt.testing.emulator.kernels import EmulatedModule

from .harness import emulated_module_or_skip

REPO = Path(__file__).resolve().parents[2]
PASTE_CU = REPO / "src" / "crystal_rt" / "cuda" / "kernels" / "paste.cu"
M = 28


class EmuPaste:
    def __init__(self, module: EmulatedModule) -> None:
        self.module = module

    def __call__(
        self, probs: np.ndarray, boxes: list[tuple[float, ...]], h: int, w: int, fma: bool = False
    ) -> tuple[np.ndarray, PasteLayout]:
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        layout = paste_layout(boxes, h, w, probs.shape[-1])
        meta = np.ascontiguousarray(layout.meta)
        offsets = np.ascontiguousarray(layout.offsets)
        out = np.full(max(layout.total_bytes, 1), 7, np.uint8)  # 7: "never written"
        launch = paste_launch(
            probs.ctypes.data,
            probs.shape[-1],
            meta.ctypes.data,
            offsets.ctypes.data,
            layout,
            out.ctypes.data,
            fma,
        )
        self.module.run(launch.kernel, launch.grid, launch.block, launch.args, launch.argtypes)
        return out, layout


@pytest.fixture(scope="session")
def emu() -> EmuPaste:
    return EmuPaste(emulated_module_or_skip("paste"))


def compare(emu: EmuPaste, probs: np.ndarray, boxes: list[tuple[float, ...]], h: int, w: int) -> int:
    """Number of differing pixels (asserts the crops have the same place and shape)."""
    out, layout = emu(probs, boxes, h, w)
    assert out[: layout.total_bytes].max(initial=0) <= 1, "every crop byte must be written with 0/1"
    flips = 0
    for i, box in enumerate(boxes):
        want = paste_mask(probs[i], box, h, w)
        crop, x0, y0 = layout.crop(out, i)
        assert crop.shape == want.crop.shape, (box, crop.shape, want.crop.shape)
        if crop.size:
            assert (x0, y0) == (want.x0, want.y0)
        flips += int(np.count_nonzero(crop != want.crop))
    return flips


def random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> list[tuple[float, ...]]:
    boxes = []
    for k in range(n):
        kind = k % 4
        bw = float(rng.uniform(0.05, 4.0) if kind == 0 else rng.uniform(4.0, 1.5 * max(w, 8)))
        bh = float(rng.uniform(0.05, 4.0) if kind == 1 else rng.uniform(4.0, 1.5 * max(h, 8)))
        x1 = float(rng.uniform(-0.5 * bw - 5, w + 5))  # partly / wholly outside the image too
        y1 = float(rng.uniform(-0.5 * bh - 5, h + 5))
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    return boxes


def _extent_for(target: int, origin: float) -> float:
    """A box extent whose expanded integer extent (paste_layout's box_w) is exactly ``target``."""
    for extent in np.linspace(0.3 * target, 1.2 * target, 4000):
        box = (origin, origin, origin + float(extent), origin + float(extent))
        if int(paste_layout([box], 1000, 1000).meta[0, 3]) == target:
            return float(extent)
    raise AssertionError(f"no box extent for {target}")


def box_for_size(target_w: int, target_h: int) -> tuple[float, ...]:
    """A box whose expanded integer box is exactly target_w x target_h."""
    x1, y1 = 10.25, 10.25
    return (x1, y1, x1 + _extent_for(target_w, x1), y1 + _extent_for(target_h, y1))


def test_paste_random(emu: EmuPaste) -> None:
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(8, 260, 2))
        n = int(rng.integers(1, 10))
        probs = rng.random((n, M, M), dtype=np.float32)
        assert compare(emu, probs, random_boxes(rng, n, h, w), h, w) == 0, trial


def test_paste_quantised_probabilities_and_ties(emu: EmuPaste) -> None:
    """Probabilities on a 1/4 grid: many interpolated values land exactly on 0.5 (background)."""
    rng = np.random.default_rng(1)
    h, w = 120, 90
    probs = (rng.integers(0, 5, (8, M, M)) / 4).astype(np.float32)
    probs[0] = 0.5
    assert compare(emu, probs, random_boxes(rng, 8, h, w), h, w) == 0


def test_paste_special_sizes(emu: EmuPaste) -> None:
    """30x30 (cv2 copies), 15x15 (cv2's 2x "area fast" path, SIMD and scalar columns), 1x1, 60x60."""
    rng = np.random.default_rng(2)
    boxes = [box_for_size(30, 30), box_for_size(15, 15), box_for_size(60, 60), box_for_size(15, 16)]
    boxes += [(3.2, 4.1, 3.3, 4.15), (0.0, 0.0, 1e-3, 1e-3)]
    probs = rng.random((len(boxes), M, M), dtype=np.float32)
    assert compare(emu, probs, boxes, 200, 200) == 0
    layout = paste_layout(boxes, 200, 200)
    assert [tuple(int(v) for v in r[3:5]) for r in layout.meta[:4]] == [
        (30, 30),
        (15, 15),
        (60, 60),
        (15, 16),
    ]


def test_paste_edges_and_empty(emu: EmuPaste) -> None:
    rng = np.random.default_rng(3)
    h, w = 50, 40
    boxes = [
        (-20.0, -20.0, 10.0, 10.0),  # top-left corner cut
        (30.0, 40.0, 80.0, 90.0),  # bottom-right cut
        (-10.0, 10.0, 60.0, 20.0),  # wider than the image
        (100.0, 100.0, 120.0, 130.0),  # entirely outside: empty crop
        (0.0, 0.0, 40.0, 50.0),  # the whole image
    ]
    probs = rng.random((len(boxes), M, M), dtype=np.float32)
    assert compare(emu, probs, boxes, h, w) == 0
    layout = paste_layout(boxes, h, w)
    assert tuple(layout.meta[3, 7:9]) == (0, 0)
