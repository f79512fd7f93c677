"""Tiled inference (runtime/tiling.py): the windows, the merge, and what it buys on large drops of
small crystals, on the CPU and on the simulated GPU."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.errors import InvalidSpec
from crystal_rt.results.detection import Instance, InstanceMask
from crystal_rt.runtime.detector import Detector
from crystal_rt.runtime.tiling import Tiling, WindowDetection, _box_iou, merge_windows, plan_windows
from crystal_rt.spec import PreprocessSpec

SPEC = PreprocessSpec()  # 512 letterbox


def test_windows_cover_the_image_with_the_overlap() -> None:
    windows = plan_windows(2028, 2532, SPEC, Tiling("on", overlap=0.25))
    assert (
        windows is not None and len(windows) == 5 * 7
    )  # stride 384: ceil(1516 / 384) + 1, ceil(2020 / 384) + 1
    covered = np.zeros((2028, 2532), np.int32)
    for w in windows:
        assert (w.w, w.h) == (512, 512)  # full tiles: the last row/column is shifted inward
        covered[w.y : w.y + w.h, w.x : w.x + w.w] += 1
    assert covered.min() >= 1
    xs = sorted({w.x for w in windows})
    assert xs[0] == 0 and xs[-1] == 2532 - 512
    assert all(b - a <= 512 - 128 for a, b in itertools.pairwise(xs))  # at least 128 px shared
    first, last = windows[0], windows[-1]
    assert not first.inner_left and not first.inner_top and first.inner_right and first.inner_bottom
    assert last.inner_left and last.inner_top and not last.inner_right and not last.inner_bottom


def test_auto_tiles_only_images_that_would_shrink() -> None:
    assert plan_windows(700, 760, SPEC, Tiling("auto")) is None  # shrinks 1.48x: whole image
    assert plan_windows(1024, 1224, SPEC, Tiling("auto")) is not None  # 2.4x
    assert plan_windows(1024, 1224, SPEC, None) is None
    assert plan_windows(1024, 1224, SPEC, Tiling("off")) is None
    assert plan_windows(400, 500, SPEC, Tiling("on")) is None  # fits in one tile
    small = plan_windows(1000, 1000, SPEC, Tiling("on", tile_size=256, overlap=0.0))
    assert small is not None and len(small) == 16 and {(w.w, w.h) for w in small} == {(256, 256)}
    narrow = plan_windows(300, 2000, SPEC, Tiling("on"))  # shorter than a tile: one row of 300
    assert narrow is not None and {w.h for w in narrow} == {300} and len({w.y for w in narrow}) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "sometimes"}, {"tile_size": 8}, {"overlap": 0.6}, {"overlap": -0.1}, {"overlap": float("nan")}],
)
def test_bad_tiling_is_invalid_spec(kwargs: dict) -> None:
    with pytest.raises(InvalidSpec):
        Tiling(**kwargs)


def _det(
    x0: int, y0: int, w: int, h: int, window: int, cut: bool, score: float = 0.9, label: int = 1
) -> WindowDetection:
    mask = InstanceMask(np.ones((h, w), bool), x0, y0, 1000, 1000)
    inst = Instance(label, "crystal", score, (float(x0), float(y0), float(x0 + w), float(y0 + h)), mask)
    return WindowDetection(inst, window, cut)


def test_merge_drops_other_windows_views_and_joins_cut_pieces() -> None:
    dets = [
        _det(100, 100, 30, 30, 0, False, 0.95),  # a crystal whole in window 0 ...
        _det(101, 100, 30, 30, 1, False, 0.90),  # ... and whole in window 1: a duplicate
        _det(100, 100, 20, 30, 2, True, 0.97),  # ... cut by window 2's edge: inside the whole view
        _det(300, 300, 40, 20, 0, True, 0.8),  # a long crystal cut in window 0 ...
        _det(330, 300, 50, 20, 1, True, 0.7),  # ... and in window 1 (they overlap): joined
        _det(500, 500, 10, 10, 0, False, 0.6),  # two crystals side by side in ONE window: both stay
        _det(503, 503, 10, 10, 0, False, 0.55),
        _det(100, 100, 30, 30, 1, False, 0.5, label=2),  # another class on the same spot: stays
    ]
    merged = merge_windows(dets)
    boxes = sorted((tuple(int(v) for v in m.box), m.label) for m in merged)
    assert boxes == [
        ((100, 100, 130, 130), 1),
        ((100, 100, 130, 130), 2),
        ((300, 300, 380, 320), 1),
        ((500, 500, 510, 510), 1),
        ((503, 503, 513, 513), 1),
    ]
    joined = next(m for m in merged if m.box[0] == 300)
    assert joined.score == 0.8 and joined.mask.area == 80 * 20 and joined.mask.x0 == 300
    assert [m.score for m in merged] == sorted((m.score for m in merged), reverse=True)


def _from_mask(full: np.ndarray, score: float) -> Instance:
    """An instance (image pixels) of a full-image mask."""
    ys, xs = np.nonzero(full)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    mask = InstanceMask(full[y0:y1, x0:x1].copy(), x0, y0, *full.shape)
    return Instance(1, "crystal", score, (float(x0), float(y0), float(x1), float(y1)), mask)


def test_merge_joins_fragments_of_a_crystal_cut_by_a_window_edge() -> None:
    """Issue 31: a window that sees a crystal cut by its edge outlines two pieces of it that do not
    touch the edge; the neighbouring window sees it whole. The pieces lie mostly (not wholly) inside
    the whole crystal's mask with a box IoU far below 0.5: they are joined into it, not kept as
    crystals of their own."""
    import cv2

    height, width = 512, 896
    windows = plan_windows(height, width, SPEC, Tiling("on", overlap=0.25))
    assert windows is not None and [(w.x, w.w) for w in windows] == [(0, 512), (384, 512)]
    crystal = np.zeros((height, width), np.uint8)
    cv2.ellipse(crystal, (465, 250), (55, 22), 15, 0, 360, 1, -1)
    crystal = crystal.astype(bool)
    cols = np.arange(width)[None, :]
    grown = cv2.dilate(crystal.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    pieces = [  # window 0's outline of what it sees (x < 512), split at a crack, a little too wide
        grown & (cols >= 405) & (cols < 455) & (np.arange(height)[:, None] < 262),
        crystal & (cols >= 458) & (cols < 505) | (grown & (cols >= 470) & (cols < 490)),
    ]
    whole = _from_mask(crystal, 0.93)
    dets = [WindowDetection(whole, 1, windows[1].touches_inner_edge(whole.box))]
    for piece, score in zip(pieces, (0.96, 0.88), strict=True):
        inst = _from_mask(piece, score)
        inside = np.count_nonzero(piece & crystal) / np.count_nonzero(piece)
        assert 0.85 <= inside < 0.99  # mostly inside, as the 91 % and 94 %
        assert _box_iou(inst.box, whole.box) < 0.5  # what the duplicate rule looks at
        dets.append(WindowDetection(inst, 0, windows[0].touches_inner_edge(inst.box)))
    assert [d.cut for d in dets] == [False, False, False]  # none touches a window edge
    merged = merge_windows(dets)
    assert len(merged) == 1
    joined = merged[0]
    full = np.zeros((height, width), bool)
    m = joined.mask
    full[m.y0 : m.y0 + m.crop.shape[0], m.x0 : m.x0 + m.crop.shape[1]] = m.crop
    assert (full >= crystal).all() and joined.score == 0.96
    assert joined.mask.area <= np.count_nonzero(crystal | pieces[0] | pieces[1])
    # Two detections of ONE window, one inside the other, stay apart: the model decided.
    same = [WindowDetection(whole, 1, False), WindowDetection(_from_mask(pieces[1] & crystal, 0.9), 1, False)]
    assert len(merge_windows(same)) == 2


def _recall(result, masks: list[np.ndarray]) -> float:
    def iou(a, b) -> float:
        x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    hits = 0
    for m in masks:
        ys, xs = np.nonzero(m)
        truth = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        hits += any(iou(truth, inst.box) > 0.5 for inst in result.instances)
    return hits / len(masks)


@pytest.fixture(scope="module")
def small_crystals():
    """A 1200 x 1600 drop of 60-80 crystals of 12-30 px (a 3x shrink at 512 px loses them)."""
    from crystal_rt.data.synthetic import make_drop

    return make_drop(11, 1200, 1600, 80, crystal_size=(0.01, 0.025), min_crystals=60)


def test_tiles_find_the_small_crystals_the_whole_image_loses(demo_ort_engine: Path, small_crystals) -> None:
    drop = small_crystals
    with (
        Detector.load(demo_ort_engine) as whole,
        Detector.load(demo_ort_engine, tiling=Tiling("auto")) as tiled,
    ):
        a, b = whole.detect(drop.image), tiled.detect(drop.image)
    assert b.windows == 12 and a.windows == 0
    recall_whole, recall_tiled = _recall(a, drop.masks), _recall(b, drop.masks)
    assert recall_tiled >= 0.5 and recall_tiled >= recall_whole + 0.4, (recall_whole, recall_tiled)
    # every instance lies in the image, its mask inside its box (shifted from its window correctly)
    for inst in b.instances:
        m = inst.mask
        assert m.x0 >= 0 and m.x0 + m.crop.shape[1] <= 1600 and m.y0 >= 0 and m.y0 + m.crop.shape[0] <= 1200
        slack = (inst.box[2] - inst.box[0]) / 28 + 2  # the paste crop is the box expanded by 30/28
        assert inst.box[0] - slack <= m.x0 and m.x0 + m.crop.shape[1] <= inst.box[2] + slack
    # no crystal reported twice by overlapping windows
    boxes = np.array([inst.box for inst in b.instances])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    close = np.linalg.norm(centres[:, None] - centres[None], axis=2) < 2
    assert close.sum() == len(boxes)


def test_tiled_gpu_stages_equal_the_cpu_stages(sim_gpu, demo_trt_engine: Path, small_crystals) -> None:
    """The device crops windows out of the image it enhanced once (pointer offsets, one upload)."""
    with Detector.load(demo_trt_engine, tiling=Tiling("on", overlap=0.1)) as det:
        gpu = det.detect(small_crystals.image)
        cpu = det.detect(small_crystals.image, stages="cpu")
    assert gpu.devices["clahe"] == gpu.devices["letterbox"] == "cuda:0" and cpu.devices["letterbox"] == "cpu"
    assert gpu.windows == cpu.windows > 1
    assert len(gpu) == len(cpu) and len(gpu) > 10
    for a, b in zip(gpu.instances, cpu.instances, strict=True):
        assert a.label == b.label and abs(a.score - b.score) < 1e-4
        assert np.allclose(a.box, b.box, atol=1e-3)
        assert abs(a.mask.area - b.mask.area) <= max(2, 0.01 * b.mask.area)


def test_detect_cli_tiles_and_refuses_bad_tiling(
    demo_ort_engine: Path, small_crystals, tmp_path: Path
) -> None:
    import cv2

    from crystal_rt.cli.main import main

    image = tmp_path / "big.png"
    cv2.imwrite(str(image), small_crystals.image)
    out = tmp_path / "out"
    assert (
        main(
            [
                "detect",
                str(demo_ort_engine),
                str(image),
                "-o",
                str(out),
                "--tile-size",
                "512",
                "--overlap",
                "0.2",
            ]
        )
        == 0
    )
    data = json.loads((out / "big.png.json").read_text())
    assert data["tiles"] == 12 and data["num_instances"] > 20
    for bad in (["--overlap", "0.7"], ["--tile-size", "16"], ["--tiles", "maybe"], ["--tile-size", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(["detect", str(demo_ort_engine), str(image), "-o", str(out), *bad])
        assert exc.value.code == 2
