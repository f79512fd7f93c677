"""The generator's realism components: switchable, each visible, none of them annotated, and with
all of them off the generator draws exactly what it drew before they existed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.data import realism
from crystal_rt.data.realism import COMPONENTS, Components
from crystal_rt.data.synthetic import SyntheticDrop, make_drop
from crystal_rt.errors import InvalidOption

# sha256 of image + masks drawn by the generator of commit 36d8f6d (before the components).
BEFORE = {
    (11, 300, 400, False, 8): "913b24a559411fb09645fef3f64f01d090da218685d5ae8c5316158a88edc84e",
    (7, 256, 320, True, 16): "ab349cd84f9e3507e9bbb4333f4d4eaf0d234dbcfe8d4f176b1a22c0e64bbc68",
}

SCENE = ("plastic", "reflections", "round_objects", "skins", "cells", "optics")


def _digest(drop: SyntheticDrop) -> str:
    h = hashlib.sha256(drop.image.tobytes())
    for mask in drop.masks:
        h.update(mask.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", list(BEFORE))
def test_no_components_is_the_generator_as_it_was(key: tuple[int, int, int, bool, int]) -> None:
    seed, height, width, rgb, bits = key
    drop = make_drop(seed, height, width, rgb=rgb, bit_depth=bits, components=Components.none())
    assert _digest(drop) == BEFORE[key]


def test_parse() -> None:
    assert Components.parse("all") == Components()
    assert Components.parse("none") == Components.none()
    only = Components.parse("cells,optics")
    assert only.names() == ("cells", "optics")
    assert Components.parse("all,-cells,-dense_small").names() == tuple(
        n for n in COMPONENTS if n not in ("cells", "dense_small")
    )
    with pytest.raises(InvalidOption, match="unknown component 'bubbles'"):
        Components.parse("bubbles")
    with pytest.raises(InvalidOption, match="empty"):
        Components.parse(" , ")


def _first_firing(name: str) -> int:
    return next(seed for seed in range(200) if realism.fires(Components(), name, seed) is not None)


@pytest.mark.parametrize("name", SCENE)
def test_each_component_changes_only_the_pixels_never_the_masks(name: str) -> None:
    """A component that fires changes the image; the crystals and their masks stay exactly as they
    were (negatives are never annotated; crystals are drawn on top of them)."""
    seed = _first_firing(name)
    only = Components.parse(name)
    plain = make_drop(seed, 320, 400, components=Components.none())
    drawn = make_drop(seed, 320, 400, components=only)
    assert drawn.image.shape == plain.image.shape and drawn.image.dtype == plain.image.dtype
    changed = np.abs(drawn.image.astype(int) - plain.image.astype(int)) > 3
    assert changed.mean() > 0.0005, f"{name} drew nothing visible"
    assert len(drawn.masks) == len(plain.masks)
    for a, b in zip(drawn.masks, plain.masks, strict=True):
        assert np.array_equal(a, b)


def test_switching_one_off_leaves_the_others_as_they_were() -> None:
    """Each component draws from its own stream: all-but-cells equals all with cells never firing."""
    seed = next(
        s
        for s in range(200)
        if realism.fires(Components(), "cells", s) is None and realism.fires(Components(), "plastic", s)
    )
    a = make_drop(seed, 256, 256, components=Components())
    b = make_drop(seed, 256, 256, components=Components.parse("all,-cells"))
    assert np.array_equal(a.image, b.image)


def test_chances_are_roughly_as_documented() -> None:
    for name, chance in realism.CHANCE.items():
        rate = np.mean([realism.fires(Components(), name, seed) is not None for seed in range(400)])
        assert abs(rate - chance) < 0.08, (name, rate, chance)


def test_dense_tile_has_many_small_crystals() -> None:
    drop = make_drop(3, 512, 512, dense=True)
    assert len(drop.masks) >= 20
    sides = [np.sqrt(m.sum()) for m in drop.masks]
    assert 3 <= np.median(sides) <= 20


@pytest.mark.parametrize("msb", [False, True])
def test_sensor_bits_in_16_bit(msb: bool) -> None:
    drop = make_drop(4, 256, 256, bit_depth=16, significant_bits=12, msb_aligned=msb)
    assert drop.image.dtype == np.uint16 and drop.significant_bits == 12
    if msb:
        assert (drop.image % 16 == 0).all() and drop.image.max() > 4095
    else:
        assert drop.image.max() <= 4095
    with pytest.raises(ValueError, match="significant_bits"):
        make_drop(4, 64, 64, bit_depth=8, significant_bits=12)


def test_written_12_bit_files_say_so(tmp_path: Path) -> None:
    """``crystal-rt synth`` writes 12/14-bit data with a PNG sBIT chunk, which the reader honours."""
    from crystal_rt.data.synth_writer import SynthOptions, write_synthetic
    from crystal_rt.io.decode import read_image_info

    write_synthetic(tmp_path, SynthOptions(count=12, seed=3, size=(96, 128), bit_depth="16"))
    depths = {read_image_info(p).bit_depth for p in sorted((tmp_path / "images").glob("*.png"))}
    assert 12 in depths or 14 in depths


def test_cli_help_names_every_component() -> None:
    from crystal_rt.cli.synth import add_parser

    text = Path(add_parser.__code__.co_filename).read_text()
    assert all(name in text for name in COMPONENTS)
