"""Synthetic crystallization-drop images with exact instance masks.

A round drop with a dark meniscus edge inside a well, uneven backlight and vignetting, faint
precipitate texture, and polygonal crystals (needles, plates, prisms) with exact masks. Seeded
and reproducible. This is the small generator the demo and tests use; richer habits, 16-bit and
RGB output and the ``crystal-rt synth`` command build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class SyntheticDrop:
    image: np.ndarray  # uint8 (H, W) gray
    masks: list[np.ndarray]  # bool (H, W), one per crystal
    labels: list[int]  # 1 = crystal


def _crystal_polygon(rng: np.random.Generator, cx: float, cy: float, size: float) -> np.ndarray:
    habit = rng.choice(["needle", "plate", "prism"])
    angle = rng.uniform(0, np.pi)
    if habit == "needle":
        length, width = size * rng.uniform(1.2, 2.0), size * rng.uniform(0.08, 0.18)
        pts = np.array(
            [
                [-length / 2, 0],
                [-length / 2 + width, -width / 2],
                [length / 2 - width, -width / 2],
                [length / 2, 0],
                [length / 2 - width, width / 2],
                [-length / 2 + width, width / 2],
            ]
        )
    elif habit == "plate":
        n = 6
        radius = size * rng.uniform(0.4, 0.7)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t) * rng.uniform(0.6, 1.0)], 1) * radius
    else:
        a, b = size * rng.uniform(0.4, 0.8), size * rng.uniform(0.25, 0.5)
        pts = np.array([[-a, -b], [a, -b * 0.8], [a * 1.1, b], [-a * 0.9, b * 1.1]])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.asarray((pts @ rot.T) + [cx, cy], dtype=np.int32)


def make_drop(seed: int, height: int = 512, width: int = 512, max_crystals: int = 6) -> SyntheticDrop:
    """One gray 8-bit drop image with 1..max_crystals crystals and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Uneven backlight: a tilted gradient and radial vignetting.
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light = 150 + 60 * (gx * (xx / width - 0.5) + gy * (yy / height - 0.5))
    r_well = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    light *= 1.0 - 0.45 * np.clip(r_well, 0, 1.4) ** 2
    img = light + rng.normal(0, 3.0, (height, width)).astype(np.float32)
    # The drop: slightly darker inside, a dark meniscus ring at the edge.
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    radius = min(height, width) * rng.uniform(0.33, 0.42)
    r = np.hypot(xx - cx, yy - cy)
    img -= 18 * (r < radius)
    img -= 70 * np.exp(-(((r - radius) / (0.02 * radius + 1)) ** 2))
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 3)
    img += 10 * texture * (r < radius)
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_crystals + 1))):
        ang, dist = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0, 0.55))
        size = radius * rng.uniform(0.12, 0.3)
        poly = _crystal_polygon(rng, cx + dist * np.cos(ang), cy + dist * np.sin(ang), size)
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(mask, [poly], 1)
        if mask.sum() < 16:
            continue
        shade = rng.uniform(-60, 50)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        img = np.where(mask > 0, img + shade, img)
        img -= 40 * edge
        masks.append(mask.astype(bool))
    image = np.clip(img, 0, 255).astype(np.uint8)
    return SyntheticDrop(image=image, masks=masks, labels=[1] * len(masks))
