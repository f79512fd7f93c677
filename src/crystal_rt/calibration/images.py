"""Calibration images: a seeded sample of a folder, preprocessed exactly as the engine will see them."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, InvalidImage
from ..io.decode import images_below, list_images, read_image_info
from ..runtime.bit_depth import full_range
from ..runtime.preprocess import preprocess
from ..spec import PreprocessSpec
from .options import DEFAULT_NUM_IMAGES

MIN_IMAGES = 4


def where_images_are(folder: Path, recursive: bool) -> str:
    """``; N image(s) in sub-folders (e.g. ...): add --recursive`` where that is why none were found."""
    if recursive:
        return ""
    count, examples = images_below(folder)
    if not count:
        return f"; {folder} holds no .png/.jpg/.tif/.bmp images"
    names = ", ".join(str(p.relative_to(folder)) for p in examples)
    return f"; {count} image(s) in its sub-folders (e.g. {names}): add --recursive to use them"


@dataclass
class CalibrationImages:
    """``num_images`` images drawn (seeded) from ``folder``; unreadable files are skipped and counted.

    Iterating yields the engine's input tensors, float32 [1, 3, S, S], through the model's own
    PreprocessSpec (CLAHE, letterbox, normalise), so calibration sees what inference sees.
    """

    folder: Path
    spec: PreprocessSpec
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    exclude: Sequence[Path] = ()
    recursive: bool = False
    paths: list[Path] = field(init=False)
    skipped: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        folder = Path(self.folder)
        if not folder.is_dir():
            raise CalibrationError("calibration image folder not found", path=folder)
        if self.num_images < MIN_IMAGES:
            raise CalibrationError(f"calibrate on at least {MIN_IMAGES} images, not {self.num_images}")
        excluded = {p.resolve() for p in self.exclude}
        found = [p for p in list_images([folder], recursive=self.recursive) if p.resolve() not in excluded]
        random.Random(self.seed).shuffle(found)
        self.paths = found[: self.num_images]

    def tensors(self, on_image: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
        """Each usable image's input tensor; fails when fewer than MIN_IMAGES could be read."""
        usable = 0
        self.skipped = []
        for path in self.paths:
            try:
                pixels = full_range(read_image_info(path))  # as the Detector expands it
            except InvalidImage as exc:
                self.skipped.append(f"{path.name}: {exc.message}")
                continue
            finally:
                if on_image is not None:
                    on_image()
            usable += 1
            yield preprocess(pixels, self.spec).tensor
        if usable < MIN_IMAGES:
            examples = "; ".join(self.skipped[:3])
            detail = f" ({len(self.skipped)} unreadable: {examples})" if self.skipped else ""
            raise CalibrationError(
                f"only {usable} usable image(s) found, calibration needs at least {MIN_IMAGES}{detail}"
                + where_images_are(Path(self.folder), self.recursive),
                path=self.folder,
            )

    def fingerprint(self) -> str:
        """SHA-256 over the sampled files' names and contents: which images calibrated a graph."""
        digest = hashlib.sha256()
        for path in sorted(self.paths, key=lambda p: p.name):
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.paths)


def held_out_sample(images: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` of ``images`` in a seeded order (another order than the calibration sample's)."""
    chosen = list(images)
    random.Random(seed + 1).shuffle(chosen)
    return chosen[:count]
