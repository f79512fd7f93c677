"""The synthetic drop generator: reproducible, exact disjoint masks, every habit, every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_rt.data.synthetic import HABITS, make_drop, random_size


def test_same_seed_same_image_and_masks() -> None:
    a, b = make_drop(11, 300, 400), make_drop(11, 300, 400)
    assert np.array_equal(a.image, b.image)
    assert len(a.masks) == len(b.masks) and all(
        np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True)
    )
    assert not np.array_equal(a.image, make_drop(12, 300, 400).image)


def test_masks_are_disjoint_nonempty_and_sized() -> None:
    total = 0
    for seed in range(6):
        drop = make_drop(seed, 320, 400, max_crystals=12)
        assert drop.image.shape == (320, 400) and drop.image.dtype == np.uint8
        assert len(drop.masks) == len(drop.labels) == len(drop.habits) == len(drop.out_of_focus)
        stack = np.stack(drop.masks) if drop.masks else np.zeros((0, 320, 400), bool)
        assert stack.dtype == bool and stack.shape[1:] == (320, 400)
        assert (stack.sum(axis=(1, 2)) >= 12).all()
        assert (stack.sum(axis=0) <= 1).all(), "a pixel belongs to two instances"
        total += len(drop.masks)
    assert total >= 12


@pytest.mark.parametrize("habit", HABITS)
def test_every_habit_renders(habit: str) -> None:
    drop = make_drop(3, 400, 400, max_crystals=4, habits=(habit,))
    assert drop.masks and set(drop.habits) == {habit}


def test_crystals_are_outlined_and_some_out_of_focus() -> None:
    """Each crystal has a dark outline (its silhouette's border is darker than the drop around it)."""
    blurred = []
    for seed in range(8):
        drop = make_drop(seed, 400, 400, max_crystals=6)
        image = drop.image.astype(np.float64)
        for mask, soft in zip(drop.masks, drop.out_of_focus, strict=True):
            blurred.append(soft)
            if soft or mask.sum() < 200:
                continue
            inner = np.zeros_like(mask)
            inner[1:-1, 1:-1] = (
                mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            )
            grown = mask.copy()
            for _ in range(6):
                grown[1:, :] |= grown[:-1, :].copy()
                grown[:-1, :] |= grown[1:, :].copy()
                grown[:, 1:] |= grown[:, :-1].copy()
                grown[:, :-1] |= grown[:, 1:].copy()
            ring = grown & ~mask
            border = mask & ~inner
            assert image[border].mean() < image[ring].mean()
    assert any(blurred) and not all(blurred)


def test_rgb_and_16_bit() -> None:
    rgb = make_drop(5, 256, 320, rgb=True)
    assert rgb.image.shape == (256, 320, 3) and rgb.image.dtype == np.uint8
    deep = make_drop(5, 256, 320, bit_depth=16)
    assert deep.image.dtype == np.uint16 and deep.image.max() > 255
    # The same scene: 16-bit is the 8-bit image with finer steps.
    eight = make_drop(5, 256, 320)
    assert np.abs(deep.image / 257.0 - eight.image).mean() < 1.0


def test_uneven_backlight_is_strong() -> None:
    """The darkest and brightest parts of the lit well differ a lot: CLAHE has work to do."""
    ratios = []
    for seed in range(5):
        image = make_drop(seed, 400, 400).image.astype(np.float64)
        blocks = image.reshape(8, 50, 8, 50).mean(axis=(1, 3))
        lit = blocks[blocks > 60]
        ratios.append(lit.min() / lit.max())
    assert min(ratios) < 0.6


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bit_depth"):
        make_drop(0, 100, 100, bit_depth=12)
    with pytest.raises(ValueError, match="too small"):
        make_drop(0, 8, 100)


def test_random_sizes_span_the_imager_range() -> None:
    rng = np.random.default_rng(0)
    shapes = {random_size(rng) for _ in range(200)}
    assert min(min(s) for s in shapes) == 512 and max(max(s) for s in shapes) == 2532


def test_write_synthetic_masks_round_trip(tmp_path: Path) -> None:
    from crystal_rt.data.coco import load_coco
    from crystal_rt.data.realism import Components
    from crystal_rt.data.synth_writer import SynthOptions, image_seed, write_synthetic
    from crystal_rt.io.decode import read_image

    options = SynthOptions(
        count=3, seed=7, size=(200, 240), colour="gray", bit_depth="8", components=Components.none()
    )
    path = write_synthetic(tmp_path, options)
    dataset = load_coco(path)
    assert len(dataset) == 3 and dataset.class_names == ("crystal",)
    for index, record in enumerate(dataset.images):
        drop = make_drop(image_seed(7, index), 200, 240, 12, components=Components.none())
        assert np.array_equal(read_image(dataset.image_path(record.id)), drop.image)
        masks, labels, crowd = dataset.masks(record.id)
        assert len(masks) == len(drop.masks) and (labels == 1).all() and not crowd.any()
        for got, want in zip(masks, drop.masks, strict=True):
            assert np.array_equal(got, want)


def test_synth_options_are_checked(tmp_path: Path) -> None:
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.errors import CrystalRtError

    with pytest.raises(CrystalRtError, match="-n"):
        write_synthetic(tmp_path, SynthOptions(count=0))
    with pytest.raises(CrystalRtError, match="--colour"):
        write_synthetic(tmp_path, SynthOptions(count=1, colour="blue"))
