"""Write a synthetic dataset: images plus a COCO JSON of their instances (``crystal-rt synth``)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import InvalidOption, OutputNotWritten
from .realism import DENSE_CHANCE, TILE_SIZES, Components, sensor_bits
from .synthetic import SyntheticDrop, make_drop, random_size

COLOURS = ("gray", "rgb", "mixed")
DEPTHS = ("8", "16", "mixed")


@dataclass(frozen=True)
class SynthOptions:
    count: int
    seed: int = 0
    size: tuple[int, int] | None = None  # (height, width); None: random 512 .. 2028x2532
    colour: str = "mixed"
    bit_depth: str = "mixed"
    max_crystals: int = 12
    # What real drops contain besides crystals (data/realism.py); Components.none(): as before.
    components: Components = field(default_factory=Components)

    def validate(self) -> None:
        if self.count < 1:
            raise InvalidOption("-n must be at least 1")
        if self.colour not in COLOURS:
            raise InvalidOption(f"--colour must be one of {', '.join(COLOURS)}")
        if self.bit_depth not in DEPTHS:
            raise InvalidOption(f"--bit-depth must be one of {', '.join(DEPTHS)}")
        if self.size is not None and min(self.size) < 64:
            raise InvalidOption("--size must be at least 64x64")
        if self.max_crystals < 1:
            raise InvalidOption("--max-crystals must be at least 1")


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` in a dataset made with ``--seed seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def with_sbit(png: bytes, bits: int, channels: int) -> bytes:
    """``png`` with an sBIT chunk (``bits`` significant bits per channel) right after IHDR, which is
    how a PNG says that a 16-bit file holds 12- or 14-bit sensor data (``io.decode`` reads it)."""
    body = b"sBIT" + bytes([bits] * channels)
    chunk = struct.pack(">I", channels) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def encode_png(drop: SyntheticDrop, path: Path | None = None) -> bytes:
    """A drop's image as PNG bytes (RGB stored as PNG's RGB, with an sBIT chunk when it holds
    12 or 14 sensor bits); ``path`` names the file in the error when encoding fails."""
    rgb = drop.image.ndim == 3
    pixels = cv2.cvtColor(drop.image, cv2.COLOR_RGB2BGR) if rgb else drop.image
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OutputNotWritten("could not encode a PNG", path=path)
    data = encoded.tobytes()
    if drop.significant_bits is not None:
        data = with_sbit(data, drop.significant_bits, 3 if rgb else 1)
    return data


def write_synthetic(
    output: str | os.PathLike[str],
    options: SynthOptions,
    on_image: Callable[[], None] | None = None,
) -> Path:
    """Generate ``options.count`` drops into ``output/images`` and ``output/annotations.json``."""
    from ..io.writers import atomic_write_bytes
    from .builder import CocoBuilder

    options.validate()
    out = Path(output)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    builder = CocoBuilder(("crystal",))
    for index in range(options.count):
        seed = image_seed(options.seed, index)
        rng = np.random.default_rng([seed, 1])
        height, width = options.size or random_size(rng)
        rgb = options.colour == "rgb" or (options.colour == "mixed" and rng.random() < 0.5)
        deep = options.bit_depth == "16" or (options.bit_depth == "mixed" and rng.random() < 0.2)
        extra = np.random.default_rng([seed, 3])  # the writer's component choices (none: as before)
        dense = options.components.dense_small and extra.random() < DENSE_CHANCE
        if dense and options.size is None:
            height, width = TILE_SIZES[int(extra.integers(0, len(TILE_SIZES)))]
        bits, msb = sensor_bits(extra) if deep and options.components.sensor_bits else (None, False)
        drop = make_drop(
            seed,
            height,
            width,
            options.max_crystals,
            rgb=rgb,
            bit_depth=16 if deep else 8,
            components=options.components,
            dense=dense,
            significant_bits=bits if bits != 16 else None,
            msb_aligned=msb,
        )
        name = f"drop_{index:05d}.png"
        atomic_write_bytes(images / name, encode_png(drop, path=images / name))
        image_id = builder.add_image(f"images/{name}", width, height)
        for mask in drop.masks:
            builder.add_mask(image_id, mask, "crystal")
        if on_image is not None:
            on_image()
    path = out / "annotations.json"
    builder.build(images_dir=out).write(path)
    return path
