"""Augmentations for drop micrographs, sampled as fixed-size crops at the engine's scale.

A crop is cut (mostly around a crystal) from the cached image after a random rescale (and, when
``rotate`` is set, a rotation by any angle up to it), then flipped, rotated by a multiple of 90
degrees and given a brightness / contrast / gamma jitter, sometimes a Gaussian blur (focus) and
a little noise; with ``clahe_off`` some crops come from the image without CLAHE, so the model
copes with either. Training on crops at the engine's scale costs a fraction of training on whole
letterboxed images and shows the network objects at exactly the size it will meet them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .data import CachedImage


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = 256
    scale_range: tuple[float, float] = (0.75, 1.33)
    object_centred: float = 0.85  # probability that the crop is centred near a crystal
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.08
    contrast: tuple[float, float] = (0.75, 1.3)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = 0.015
    min_visible: float = 0.3  # drop instances with less than this fraction of their area in the crop
    rotate: float = 0.0  # degrees: a rotation by a uniform angle in [-rotate, rotate] (0: none)
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.5 .. 2 px) of the crop
    clahe_off: float = 0.0  # probability that the crop comes from the image without CLAHE


@dataclass
class Sample:
    image: np.ndarray  # float32 (3, C, C) in [0, 1]
    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2
    labels: np.ndarray  # int64 (N,)
    masks: np.ndarray  # uint8 (N, C, C)


def _crop_origin(
    rng: np.random.Generator, item: CachedImage, masks: np.ndarray, scale: float, crop: int, centred: float
) -> tuple[float, float]:
    h, w = item.shape
    sh, sw = h * scale, w * scale
    if len(masks) and rng.random() < centred:
        ys, xs = np.nonzero(masks[int(rng.integers(0, len(masks)))])
        cx = (xs.mean() + 0.5) * scale + rng.uniform(-0.35, 0.35) * crop
        cy = (ys.mean() + 0.5) * scale + rng.uniform(-0.35, 0.35) * crop
        x0, y0 = cx - crop / 2, cy - crop / 2
    else:
        x0 = rng.uniform(min(0.0, sw - crop), max(0.0, sw - crop))
        y0 = rng.uniform(min(0.0, sh - crop), max(0.0, sh - crop))
    return float(x0), float(y0)


def sample_crop(rng: np.random.Generator, item: CachedImage, config: AugmentConfig) -> Sample:
    """One augmented crop of ``item`` with its instances (those still visible enough)."""
    crop = config.crop_size
    scale = float(np.exp(rng.uniform(*np.log(config.scale_range))))
    masks = item.masks()
    x0, y0 = _crop_origin(rng, item, masks, scale, crop, config.object_centred)
    matrix = np.array([[scale, 0, -x0], [0, scale, -y0]], dtype=np.float64)
    if config.rotate > 0:  # rotate about the crop's centre after the crop transform
        turn = cv2.getRotationMatrix2D(
            (crop / 2, crop / 2), float(rng.uniform(-config.rotate, config.rotate)), 1.0
        )
        matrix = turn @ np.vstack([matrix, [0, 0, 1]])
    use_plain = item.plain is not None and config.clahe_off > 0 and rng.random() < config.clahe_off
    pixels = (item.plain if use_plain and item.plain is not None else item.pixels).astype(np.float32)
    image = cv2.warpAffine(pixels, matrix, (crop, crop), flags=cv2.INTER_LINEAR, borderValue=0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    warped = np.zeros((len(masks), crop, crop), np.uint8)
    for i, mask in enumerate(masks):
        warped[i] = cv2.warpAffine(mask * 255, matrix, (crop, crop), flags=cv2.INTER_LINEAR) > 127
    visible = warped.reshape(len(warped), -1).sum(1).astype(np.float64)
    keep = (visible >= 6) & (visible >= config.min_visible * item.areas * scale * scale)
    warped, labels = warped[keep], item.labels[keep]

    if config.flips and rng.random() < 0.5:
        image, warped = image[:, ::-1], warped[:, :, ::-1]
    if config.flips and rng.random() < 0.5:
        image, warped = image[::-1], warped[:, ::-1]
    if config.rot90:
        k = int(rng.integers(0, 4))
        image, warped = np.rot90(image, k, axes=(0, 1)), np.rot90(warped, k, axes=(1, 2))

    content = image > 0
    gamma = float(np.exp(rng.uniform(*np.log(config.gamma))))
    contrast = float(rng.uniform(*config.contrast))
    bright = float(rng.uniform(-config.brightness, config.brightness))
    image = np.power(np.clip(image, 0, 1), gamma)
    image = (image - 0.5) * contrast + 0.5 + bright
    if config.blur > 0 and rng.random() < config.blur:
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), float(rng.uniform(0.5, 2.0)))
    if config.noise > 0:
        image = image + rng.normal(0, rng.uniform(0, config.noise), image.shape).astype(np.float32)
    image = np.where(content, np.clip(image, 0, 1), 0).astype(np.float32)

    boxes = np.zeros((len(warped), 4), np.float32)
    for i, mask in enumerate(warped):
        ys, xs = np.nonzero(mask)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return Sample(
        image=np.ascontiguousarray(image.transpose(2, 0, 1)),
        boxes=boxes,
        labels=labels.astype(np.int64),
        masks=np.ascontiguousarray(warped),
    )
