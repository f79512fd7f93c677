"""What real imager photos contain besides crystals: the switchable components of the generator.

Each component is one thing the shipped model used to confuse or miss on real drops. ``make_drop``
draws each component (whether it fires, and what it draws) from its own random stream
(``[seed, 2, k]``), so switching one off leaves what the others draw as it was, and with every
component off (``Components.none()``) a seed gives exactly the image the generator drew before the
components existed.

=================  ======  ==============================================================================
component          chance  what it draws
=================  ======  ==============================================================================
``plastic``        0.7     plate-well walls (two concentric edges) and moulded plastic texture (streaks,
                           turning rings, scratches) over the whole frame
``reflections``    0.35    a specular reflection of the light near the drop centre (a soft bright spot,
                           a saturated window or a ring-light arc)
``round_objects``  0.5     1-6 round things that are not crystals: bubbles (thick dark ring, bright
                           centre), oil droplets (thin ring), spherulite-like radial blobs
``skins``          0.4     a wrinkled skin over the drop and clumps of granular precipitate
``cells``          0.2     insect-cell-like negatives (membrane, granular body, nucleus, halo), in
                           clumps, with cell debris
``optics``         1.0     camera noise (shot, read, column pattern) always; focus blur of the whole
                           frame (0.3) and low contrast / under- or over-exposure (0.4)
``sensor_bits``    -       16-bit files hold 12-bit (0.4) or 14-bit (0.3) sensor data, LSB- or MSB-aligned,
                           with a PNG sBIT chunk saying so (``crystal-rt synth``)
``dense_small``    0.12    (``crystal-rt synth``) a native-scale tile inside a drop, densely filled with
                           30-120 crystals of 10-20 px, for tiled inference
=================  ======  ==============================================================================

Cells, bubbles, oil, spherulites, reflections, skins and precipitate are negatives: they are never
annotated. They are drawn before the crystals, so a crystal lies on top and its mask is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np

from ..errors import InvalidOption

COMPONENTS = (
    "plastic",
    "reflections",
    "round_objects",
    "skins",
    "cells",
    "optics",
    "sensor_bits",
    "dense_small",
)
CHANCE = {
    "plastic": 0.7,
    "reflections": 0.35,
    "round_objects": 0.5,
    "skins": 0.4,
    "cells": 0.2,
    "optics": 1.0,
}
DENSE_CHANCE = 0.12
TILE_SIZES = ((512, 512), (600, 800), (768, 768))


@dataclass(frozen=True)
class Components:
    """Which realism components a drop may get (each then fires with its chance, see the table)."""

    plastic: bool = True
    reflections: bool = True
    round_objects: bool = True
    skins: bool = True
    cells: bool = True
    optics: bool = True
    sensor_bits: bool = True
    dense_small: bool = True

    @classmethod
    def none(cls) -> Components:
        """The generator as it was before the components (``--components none``)."""
        return cls(**{name: False for name in COMPONENTS})

    @classmethod
    def parse(cls, text: str) -> Components:
        """``all``, ``none``, ``a,b`` (only those) or ``all,-a,-b`` (all but those)."""
        words = [w.strip() for w in text.split(",") if w.strip()]
        if not words:
            raise InvalidOption("--components is empty (all, none, a list, or all,-name)")
        chosen: set[str] = set()
        for word in words:
            name = word.lstrip("-")
            if word in ("all", "none"):
                chosen = set(COMPONENTS) if word == "all" else set()
            elif name not in COMPONENTS:
                raise InvalidOption(f"unknown component {name!r} (known: {', '.join(COMPONENTS)})")
            elif word.startswith("-"):
                chosen.discard(name)
            else:
                chosen.add(name)
        return cls(**{name: name in chosen for name in COMPONENTS})

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name))


def stream(seed: int, name: str) -> np.random.Generator:
    """Component ``name``'s own random stream for drop ``seed``."""
    return np.random.default_rng([seed, 2, COMPONENTS.index(name)])


def fires(parts: Components, name: str, seed: int) -> np.random.Generator | None:
    """The component's stream when it is switched on and fires for this drop (its chance), else None."""
    if not getattr(parts, name):
        return None
    rng = stream(seed, name)
    return rng if rng.random() < CHANCE[name] else None


# ---------------------------------------------------------------------------------------------
# Helpers


def _window(image: np.ndarray, cx: float, cy: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """A window of ``image`` around (cx, cy) of half-size r, clipped to the image (maybe empty), and
    its pixel coordinates relative to (cx, cy)."""
    height, width = image.shape
    x0, x1 = min(width, max(0, int(cx - r))), max(0, min(width, int(cx + r) + 2))
    y0, y1 = min(height, max(0, int(cy - r))), max(0, min(height, int(cy + r) + 2))
    x1, y1 = max(x0, x1), max(y0, y1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - np.float32(cx), yy - np.float32(cy)


def _inside_drop(
    rng: np.random.Generator, drop_inner: np.ndarray, margin: float
) -> tuple[float, float] | None:
    return _Inside(drop_inner, margin).pick(rng)


class _Inside:
    """Pixels of the drop at least ``margin`` from its edge, found once, drawn at random."""

    def __init__(self, drop_inner: np.ndarray, margin: float) -> None:
        self.ys, self.xs = np.nonzero(drop_inner > margin)

    def pick(self, rng: np.random.Generator) -> tuple[float, float] | None:
        if self.xs.size == 0:
            return None
        k = int(rng.integers(0, self.xs.size))
        return float(self.xs[k]), float(self.ys[k])


def _streaks(rng: np.random.Generator, height: int, width: int, s: int) -> np.ndarray:
    """Zero-mean unit noise stretched along one direction (moulding flow lines), at half size."""
    hh, ww = height // 2 + 8, width // 2 + 8
    noise = rng.normal(0, 1, (hh, ww)).astype(np.float32)
    sigma_x, sigma_y = s * rng.uniform(0.01, 0.03), max(0.6, s * 0.0006)
    noise = np.asarray(cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y), np.float32)
    noise /= noise.std() + 1e-6
    turn = cv2.getRotationMatrix2D((ww / 2, hh / 2), float(rng.uniform(0, 180)), 1.0)
    noise = np.asarray(cv2.warpAffine(noise, turn, (ww, hh), borderMode=cv2.BORDER_REFLECT), np.float32)
    return np.asarray(cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR), np.float32)


# ---------------------------------------------------------------------------------------------
# Components drawn on the scene (in place, on float32 transmittance)


def plastic(rng: np.random.Generator, image: np.ndarray, s: int) -> None:
    """Moulded plastic texture over the frame and the well wall's two edges."""
    height, width = image.shape
    texture = rng.uniform(0.01, 0.05) * _streaks(rng, height, width, s)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    r = np.hypot(xx - cx, yy - cy)
    period = s * rng.uniform(0.006, 0.02)
    texture += rng.uniform(0.005, 0.025) * np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi))
    image *= 1.0 + texture
    radius = s * rng.uniform(0.42, 0.62)
    for k in range(2):  # the wall: an inner and an outer edge
        edge = radius + k * s * rng.uniform(0.03, 0.07)
        width_px = s * rng.uniform(0.002, 0.006) + 0.8
        ring = np.exp(-(((r - edge) / width_px) ** 2))
        image *= 1.0 - rng.uniform(0.1, 0.4) * ring
        image += rng.uniform(0.0, 0.08) * np.exp(-(((r - edge - 2 * width_px) / width_px) ** 2))
    scratches = np.zeros_like(image)
    for _ in range(int(rng.integers(0, 5))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        angle, length = rng.uniform(0, np.pi), s * rng.uniform(0.1, 0.6)
        p1 = (int(p0[0] + length * np.cos(angle)), int(p0[1] + length * np.sin(angle)))
        cv2.line(scratches, p0, p1, float(rng.uniform(0.05, 0.2)), 1, lineType=cv2.LINE_AA)
    image *= 1.0 - scratches


def skins(
    rng: np.random.Generator, image: np.ndarray, drop_mask: np.ndarray, drop_inner: np.ndarray, s: int
) -> None:
    """A wrinkled skin over the drop (long folds, a slightly different tone) and precipitate clumps."""
    inside = drop_mask > 0
    if not inside.any():
        return
    ys, xs = np.nonzero(inside)
    centre = np.array([xs.mean(), ys.mean()])
    spread = np.array([xs.std(), ys.std()]) + 1.0
    if rng.random() < 0.7:
        folds = np.zeros_like(image)
        for _ in range(int(rng.integers(4, 20))):
            p = centre + rng.normal(0, 1.0, 2) * spread
            heading = rng.uniform(0, 2 * np.pi)
            pts = [p]
            for _ in range(int(rng.integers(8, 30))):
                heading += rng.normal(0, 0.25)
                p = p + s * 0.015 * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p)
            line = np.round(np.array(pts) * 16).astype(np.int32)
            thick = max(1, int(s * rng.uniform(0.001, 0.004)))
            cv2.polylines(folds, [line], False, 1.0, thickness=thick, lineType=cv2.LINE_AA, shift=4)
        folds = cv2.GaussianBlur(folds, (0, 0), max(0.8, s * 0.001))
        tone = 1.0 - rng.uniform(0.0, 0.06) * (rng.random() < 0.5)
        image *= np.where(inside, tone * (1.0 - rng.uniform(0.08, 0.25) * folds), 1.0)
    if rng.random() < 0.7:
        clumps = np.zeros_like(image)
        inside_points = _Inside(drop_inner, s * 0.02)
        for _ in range(int(rng.integers(2, 12))):
            where = inside_points.pick(rng)
            if where is None:
                break
            radius = s * rng.uniform(0.01, 0.05)
            count = int(rng.integers(20, 200))
            offsets = rng.normal(0, radius / 2, (count, 2))
            for dx, dy in offsets:
                dot = max(1, int(s * rng.uniform(0.0008, 0.003)))
                cv2.circle(
                    clumps, (int(where[0] + dx), int(where[1] + dy)), dot, float(rng.uniform(0.3, 1.0)), -1
                )
        clumps = cv2.GaussianBlur(clumps, (0, 0), 0.8)
        image *= 1.0 - rng.uniform(0.2, 0.5) * np.clip(clumps, 0, 1)


def round_objects(rng: np.random.Generator, image: np.ndarray, drop_inner: np.ndarray, s: int) -> None:
    """Bubbles, oil droplets and spherulite-like radial blobs inside the drop."""
    for _ in range(int(rng.integers(1, 7))):
        kind = str(rng.choice(("bubble", "oil", "spherulite"), p=(0.45, 0.3, 0.25)))
        r = s * (rng.uniform(0.01, 0.06) if kind == "bubble" else rng.uniform(0.006, 0.035))
        where = _inside_drop(rng, drop_inner, r)
        if where is None:
            return
        ys, xs, dx, dy = _window(image, where[0], where[1], 1.4 * r + 3)
        if dx.size == 0:
            continue
        d = np.hypot(dx, dy * rng.uniform(0.85, 1.15)) - r
        if kind == "bubble":  # total internal reflection: a thick dark band inside the edge
            band = np.exp(-(((d + 0.22 * r) / (0.16 * r + 0.8)) ** 2))
            centre = np.exp(-((np.hypot(dx + 0.2 * r, dy + 0.2 * r) / (0.25 * r + 0.5)) ** 2))
            factor = 1.0 - rng.uniform(0.5, 0.85) * band + rng.uniform(0.1, 0.35) * centre * (d < 0)
        elif kind == "oil":  # a thin ring, the interior a touch brighter
            ring = np.exp(-((d / (0.05 * r + 0.7)) ** 2))
            factor = 1.0 - rng.uniform(0.2, 0.5) * ring + rng.uniform(0.0, 0.06) * (d < 0)
        else:  # radial fibres from a dark core, a fuzzy outline
            fibres = np.zeros(d.shape, np.float32)
            cx0, cy0 = float(-dx[0, 0]), float(-dy[0, 0])
            for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(40, 140))):
                length = r * rng.uniform(0.6, 1.05)
                end = (int(cx0 + length * np.cos(angle)), int(cy0 + length * np.sin(angle)))
                cv2.line(fibres, (int(cx0), int(cy0)), end, 1.0, 1, lineType=cv2.LINE_AA)
            core = np.exp(-((np.hypot(dx, dy) / (0.3 * r + 0.5)) ** 2))
            fibres = cv2.GaussianBlur(fibres, (0, 0), 0.7)
            factor = 1.0 - rng.uniform(0.15, 0.4) * np.clip(fibres, 0, 1) - rng.uniform(0.2, 0.5) * core
        image[ys, xs] *= np.clip(factor, 0.05, 1.5).astype(np.float32)


def cells(rng: np.random.Generator, image: np.ndarray, drop_inner: np.ndarray, s: int) -> None:
    """Insect-cell-like round bodies in clumps, and debris: the in-cellulo negatives."""
    clump_points = _Inside(drop_inner, s * 0.03)
    for _ in range(int(rng.integers(1, 5))):
        clump = clump_points.pick(rng)
        if clump is None:
            return
        spread = s * rng.uniform(0.02, 0.08)
        for _ in range(int(rng.integers(3, 25))):
            cx = clump[0] + rng.normal(0, spread)
            cy = clump[1] + rng.normal(0, spread)
            r = s * rng.uniform(0.008, 0.025)
            ys, xs, dx, dy = _window(image, cx, cy, 1.5 * r + 3)
            if dx.size == 0:
                continue
            phi = rng.uniform(0, np.pi)
            u = dx * np.cos(phi) + dy * np.sin(phi)
            v = (-dx * np.sin(phi) + dy * np.cos(phi)) / rng.uniform(0.75, 1.0)
            d = np.hypot(u, v) - r
            membrane = np.exp(-((d / (0.07 * r + 0.6)) ** 2))
            halo = np.exp(-(((d - 0.2 * r) / (0.12 * r + 0.6)) ** 2))
            body = (d < 0) * (1.0 + 0.08 * rng.normal(0, 1, d.shape))
            nx, ny = rng.normal(0, 0.2 * r, 2)
            nucleus = np.hypot(u - nx, v - ny) < 0.4 * r
            factor = (
                1.0
                - rng.uniform(0.25, 0.6) * membrane
                + rng.uniform(0.05, 0.25) * halo
                - rng.uniform(0.0, 0.15) * body
                - rng.uniform(0.05, 0.2) * nucleus
            )
            image[ys, xs] *= np.clip(cv2.GaussianBlur(factor.astype(np.float32), (0, 0), 0.7), 0.05, 1.5)
    debris = np.zeros_like(image)
    debris_points = _Inside(drop_inner, 2)
    for _ in range(int(rng.integers(10, 60))):
        where = debris_points.pick(rng)
        if where is None:
            break
        r = s * rng.uniform(0.002, 0.008)
        sides = int(rng.integers(4, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, sides))
        radii = r * rng.uniform(0.4, 1.0, sides)
        pts = np.column_stack([where[0] + radii * np.cos(angles), where[1] + radii * np.sin(angles)])
        cv2.fillPoly(
            debris, [np.round(pts).astype(np.int32)], float(rng.uniform(0.2, 0.6)), lineType=cv2.LINE_AA
        )
    image *= 1.0 - cv2.GaussianBlur(debris, (0, 0), 0.7)


def reflection(rng: np.random.Generator, image: np.ndarray, drop_mask: np.ndarray, s: int) -> None:
    """A specular reflection of the light source near the drop centre (may saturate)."""
    ys, xs = np.nonzero(drop_mask)
    if xs.size == 0:
        return
    spread = max(4.0, float(min(xs.std(), ys.std())))
    cx = xs.mean() + rng.normal(0, 0.12) * spread
    cy = ys.mean() + rng.normal(0, 0.12) * spread
    kind = str(rng.choice(("spot", "window", "arc"), p=(0.45, 0.3, 0.25)))
    r = spread * rng.uniform(0.06, 0.3)
    sl_y, sl_x, dx, dy = _window(image, cx, cy, 1.8 * r + 4)
    if dx.size == 0:
        return
    if kind == "spot":
        shape = np.clip(1.6 * (1.0 - np.hypot(dx, dy * rng.uniform(0.7, 1.3)) / r), 0, 1)
    elif kind == "window":  # a rounded rectangle, as the light's aperture
        half = r * rng.uniform(0.4, 1.0), r * rng.uniform(0.4, 1.0)
        q = np.maximum(np.abs(dx) - half[0], 0) ** 2 + np.maximum(np.abs(dy) - half[1], 0) ** 2
        shape = (q < (0.2 * r) ** 2).astype(np.float32)
    else:  # part of a ring light
        ring = np.abs(np.hypot(dx, dy) - r) < max(1.0, 0.12 * r)
        start = rng.uniform(0, 2 * np.pi)
        angle = np.mod(np.arctan2(dy, dx) - start, 2 * np.pi)
        shape = (ring & (angle < rng.uniform(1.0, 4.0))).astype(np.float32)
    shape = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), max(0.7, 0.05 * r))
    image[sl_y, sl_x] += rng.uniform(0.3, 1.2) * shape


def optics(rng: np.random.Generator, image: np.ndarray, s: int) -> np.ndarray:
    """Focus blur (sometimes), low contrast or exposure (sometimes), camera noise (always)."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), s * rng.uniform(0.001, 0.003))
    if rng.random() < 0.4:
        mean = float(image.mean())
        image = mean + (image - mean) * rng.uniform(0.4, 0.8)
        image = image * rng.uniform(0.7, 1.15)
    level = np.clip(image, 0, None)
    shot = rng.uniform(0.0002, 0.002)
    read = rng.uniform(0.002, 0.008)
    noise = rng.normal(0, 1, image.shape).astype(np.float32)
    image = image + noise * np.sqrt(shot * level + read * read)
    if rng.random() < 0.5:  # column fixed-pattern noise of a CMOS sensor
        columns = np.asarray(rng.normal(0, rng.uniform(0.001, 0.004), image.shape[1]), np.float32)
        image = image + columns
    return np.asarray(image, np.float32)


def sensor_bits(rng: np.random.Generator) -> tuple[int, bool]:
    """(significant bits, MSB-aligned) for a 16-bit file: 12 (0.4), 14 (0.3) or 16 bits."""
    bits = int(rng.choice((12, 14, 16), p=(0.4, 0.3, 0.3)))
    return bits, bool(rng.random() < 0.5)


def quantise(image: np.ndarray, bit_depth: int, significant: int | None, msb: bool) -> np.ndarray:
    """[0, 1] float -> uint8, or uint16 holding ``significant`` bits (shifted up when ``msb``)."""
    if bit_depth == 8:
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    bits = significant or 16
    top = float(2**bits - 1)
    pixels = np.clip(np.rint(image * top), 0, top).astype(np.uint16)
    if msb and bits < 16:
        pixels = (pixels << np.uint16(16 - bits)).astype(np.uint16)
    return pixels
