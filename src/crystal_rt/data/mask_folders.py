"""Mask folders, the Matterport / Kaggle Data Science Bowl 2018 layout.

::

    ROOT/NAME/images/NAME.png     the image (any format read_image reads)
    ROOT/NAME/masks/*.png         one instance per file: nonzero pixels are inside

Each sample folder holds one image; a sample without a ``masks/`` folder (or with an empty one)
is an image without instances. ROOT may also be a single NAME folder. Masks must have the
image's size and at least one nonzero pixel; every instance gets the one category ``class_name``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidDataset, InvalidImage
from ..io.decode import list_images, read_image
from .builder import CocoBuilder
from .coco import CocoDataset

_LAYOUT = "expected NAME/images/NAME.png and NAME/masks/*.png"


def read_mask_folders(root: str | os.PathLike[str], class_name: str = "crystal") -> CocoDataset:
    """Read ROOT/NAME/{images,masks} sample folders (or one NAME folder) into a dataset.

    ``images_dir`` is ROOT (the NAME folder's parent for a single sample) and ``file_name`` is
    ``NAME/images/NAME.png``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidDataset(
            "folder not found" if not root.exists() else f"not a folder; {_LAYOUT}", path=root
        )
    if (root / "images").is_dir():
        samples, base = [root], root.parent
    else:
        samples = sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
        base = root
    if not samples:
        raise InvalidDataset(f"no sample folders found; {_LAYOUT}", path=root)
    builder = CocoBuilder((class_name,))
    for sample in samples:
        _add_sample(builder, sample, base, class_name)
    return builder.build(images_dir=base)


def _add_sample(builder: CocoBuilder, sample: Path, base: Path, class_name: str) -> None:
    image_file = _sample_image(sample)
    height, width = _read(image_file).shape[:2]
    image_id = builder.add_image(image_file.relative_to(base).as_posix(), width, height)
    masks_dir = sample / "masks"
    for mask_file in _list(masks_dir) if masks_dir.is_dir() else []:
        pixels = _read(mask_file)
        if pixels.shape[:2] != (height, width):
            raise InvalidDataset(
                f"mask is {pixels.shape[0]}x{pixels.shape[1]} but the image {image_file.name} "
                f"is {height}x{width}",
                path=mask_file,
            )
        inside = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
        if not inside.any():
            raise InvalidDataset("mask is empty (no nonzero pixel)", path=mask_file)
        builder.add_mask(image_id, np.asarray(inside, dtype=bool), class_name)


def _sample_image(sample: Path) -> Path:
    images_dir = sample / "images"
    if not images_dir.is_dir():
        raise InvalidDataset(f"no images/ folder; {_LAYOUT}", path=sample)
    found = _list(images_dir)
    named = [p for p in found if p.stem == sample.name]
    if len(found) == 1:
        return found[0]
    if len(named) == 1:
        return named[0]
    what = "no image" if not found else f"{len(found)} images"
    raise InvalidDataset(f"found {what} in images/; expected one, named {sample.name}.png", path=images_dir)


def _list(folder: Path) -> list[Path]:
    try:
        return list_images([folder])
    except InvalidImage as exc:
        raise InvalidDataset(exc.message, path=folder) from exc


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except InvalidImage as exc:
        raise InvalidDataset(exc.message, path=path) from exc
