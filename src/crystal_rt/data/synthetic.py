"""Synthetic crystallization-drop images with exact instance masks, seeded and reproducible.

What a drop imager photographs, after ``tests/data/real/``: a bright well (round, or a
rounded square) in a dark plate, lit unevenly (a tilted backlight, vignetting and a soft blotch:
strong enough that dark corners lose most of their contrast, which is what CLAHE restores), a
grey drop inside it with a dark meniscus edge and a bright rim, precipitate speckle, sometimes a
wrinkled skin, dust and fibres, and crystals. Crystals are convex polyhedra rendered in 3D —
needles and plates (hexagonal prisms), prisms (cuboids), bipyramids and clusters of needles —
randomly oriented, shaded by facet, outlined dark, sometimes with an inclusion, sometimes out
of focus, some overlapping. A crystal's mask is its exact projected silhouette minus whatever a
later crystal covers; instances left with less than half their area are dropped.

Gray or RGB (a warm light tint), 8- or 16-bit, any size (``random_size`` draws from 512 to
2532x2028; ``synth_writer`` picks sizes and formats for ``crystal-rt synth``). The same seed
gives the same image and masks on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import realism
from .realism import Components

HABITS = ("needle", "plate", "prism", "bipyramid", "cluster")
HABIT_WEIGHTS = (0.2, 0.2, 0.25, 0.2, 0.15)
SIZES = ((512, 512), (600, 800), (768, 1024), (1024, 1224), (1200, 1600), (2028, 2532))


@dataclass
class SyntheticDrop:
    """One generated image and its instances (``masks[i]`` is a full-size bool mask)."""

    image: np.ndarray  # uint8 or uint16, (H, W) gray or (H, W, 3) RGB
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # 1 = crystal
    habits: list[str] = field(default_factory=list)
    out_of_focus: list[bool] = field(default_factory=list)
    significant_bits: int | None = None  # 16-bit images holding fewer sensor bits (12, 14)


@dataclass(frozen=True)
class _Solid:
    vertices: np.ndarray  # (V, 3)
    faces: tuple[tuple[int, ...], ...]  # vertex indices, counter-clockwise seen from outside


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) between 512x512 and 2028x2532, weighted towards imager sizes."""
    return SIZES[int(rng.choice(len(SIZES), p=[0.2, 0.15, 0.2, 0.25, 0.1, 0.1]))]


# ---------------------------------------------------------------------------------------------
# Crystal geometry


def _prism(sides: int, radius: float, length: float, squash: float = 1.0) -> _Solid:
    t = np.linspace(0, 2 * np.pi, sides, endpoint=False) + np.pi / sides
    ring = np.stack([np.cos(t) * radius, np.sin(t) * radius * squash], 1)
    top = np.column_stack([ring, np.full(sides, length / 2)])
    bottom = np.column_stack([ring, np.full(sides, -length / 2)])
    vertices = np.vstack([top, bottom])
    faces: list[tuple[int, ...]] = [tuple(range(sides)), tuple(range(2 * sides - 1, sides - 1, -1))]
    for i in range(sides):
        j = (i + 1) % sides
        faces.append((i, sides + i, sides + j, j))
    return _Solid(vertices, tuple(faces))


def _bipyramid(sides: int, radius: float, height: float) -> _Solid:
    t = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.column_stack([np.cos(t) * radius, np.sin(t) * radius, np.zeros(sides)])
    vertices = np.vstack([ring, [[0, 0, height / 2]], [[0, 0, -height / 2]]])
    faces: list[tuple[int, ...]] = []
    for i in range(sides):
        j = (i + 1) % sides
        faces.append((i, j, sides))
        faces.append((j, i, sides + 1))
    return _Solid(vertices, tuple(faces))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _tilted(rng: np.random.Generator, max_tilt: float) -> np.ndarray:
    """A rotation that keeps the solid's long (z) axis within ``max_tilt`` of the image plane."""
    spin = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-max_tilt, max_tilt)
    roll = rng.uniform(0, 2 * np.pi)
    rz = np.array([[np.cos(spin), -np.sin(spin), 0], [np.sin(spin), np.cos(spin), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    rroll = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    lay = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # z axis into the image plane
    return np.asarray(rz @ rx @ lay @ rroll)


def _solids(rng: np.random.Generator, habit: str, size: float) -> list[tuple[_Solid, np.ndarray]]:
    """Solids (with rotations) making one crystal of longest extent about ``size`` pixels."""
    if habit == "needle":
        solid = _prism(6, size * rng.uniform(0.04, 0.09), size)
        return [(solid, _tilted(rng, 0.4))]
    if habit == "plate":
        solid = _prism(6, size / 2, size * rng.uniform(0.06, 0.15), squash=rng.uniform(0.6, 1.0))
        spin = _tilted(rng, 0.3) @ np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # face on
        return [(solid, spin)]
    if habit == "prism":
        solid = _prism(4, size * rng.uniform(0.2, 0.35), size * rng.uniform(0.6, 1.0))
        return [(solid, _rotation(rng))]
    if habit == "bipyramid":
        solid = _bipyramid(4, size * rng.uniform(0.25, 0.4), size)
        return [(solid, _tilted(rng, 0.6))]
    parts = []
    base = rng.uniform(0, 2 * np.pi)
    for k in range(int(rng.integers(3, 7))):
        length = size * rng.uniform(0.5, 0.9)
        solid = _prism(6, size * rng.uniform(0.035, 0.07), length)
        shifted = _Solid(solid.vertices + np.array([0, 0, length / 2]), solid.faces)  # one end at the origin
        angle = base + k * rng.uniform(0.5, 1.3)
        rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        lay = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
        parts.append((shifted, rot @ lay))
    return parts


# ---------------------------------------------------------------------------------------------
# Scene


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-ish Gaussian-filtered noise, generated small and upsampled for speed."""
    step = max(1, int(sigma / 3))
    noise = rng.normal(0, 1, (height // step + 2, width // step + 2)).astype(np.float32)
    small = np.asarray(cv2.GaussianBlur(noise, (0, 0), max(sigma / step, 0.5)), dtype=np.float32)
    small /= small.std() + 1e-6
    if step == 1:
        return small[:height, :width]
    return cv2.resize(small, (width + 2 * step, height + 2 * step), interpolation=cv2.INTER_LINEAR)[
        :height, :width
    ]


def _blob_mask(
    rng: np.random.Generator, height: int, width: int, center: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    """A closed, wobbly ellipse as a uint8 mask (the drop outline)."""
    t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    wobble = np.ones_like(t)
    for k in range(2, 6):
        wobble += rng.uniform(0, 0.06 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    phi = rng.uniform(0, np.pi)
    x = radii[0] * wobble * np.cos(t)
    y = radii[1] * wobble * np.sin(t)
    pts = np.column_stack(
        [center[0] + x * np.cos(phi) - y * np.sin(phi), center[1] + x * np.sin(phi) + y * np.cos(phi)]
    )
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _background(rng: np.random.Generator, height: int, width: int, zoom: float = 1.0) -> np.ndarray:
    """The lit well in its plate, before the drop: float32 transmittance in [0, 1] (``zoom`` > 1:
    the frame is a tile inside the well)."""
    s = int(min(height, width) * zoom)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width * rng.uniform(0.45, 0.55)
    cy = height * rng.uniform(0.45, 0.55)
    if rng.random() < 0.6:  # round well, dark annulus (XChem-style)
        radius = s * rng.uniform(0.44, 0.52)
        dist = np.hypot(xx - cx, yy - cy) - radius
    else:  # rounded-square well filling most of the frame (VMXi-style)
        half_w, half_h = width * rng.uniform(0.38, 0.46), height * rng.uniform(0.4, 0.47)
        corner = s * rng.uniform(0.03, 0.08)
        qx = np.maximum(np.abs(xx - cx) - half_w + corner, 0)
        qy = np.maximum(np.abs(yy - cy) - half_h + corner, 0)
        dist = np.hypot(qx, qy) - corner
    band = s * rng.uniform(0.03, 0.09)
    inside = 1.0 / (1.0 + np.exp(np.clip(dist / (0.004 * s + 0.5), -50, 50)))
    shadow = np.clip(dist / band, 0, 1)
    plate = rng.uniform(0.05, 0.3) + 0.05 * _smooth_noise(rng, height, width, s * 0.02)
    well_wall = rng.uniform(0.0, 0.12) + (plate - 0.0) * shadow
    image = inside * rng.uniform(0.82, 0.95) + (1 - inside) * well_wall
    rim = np.exp(-((dist / (0.0025 * s + 0.7)) ** 2))
    return np.asarray(image - 0.25 * rim, dtype=np.float32)


def _illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uneven backlight: tilted gradient x vignetting x a soft blotch.

    Over seeds 0-199 the darkest point gets 0.16-0.60 (median 0.24) of the brightest point's light.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / width - 0.5, yy / height - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * u + np.sin(angle) * v  # -0.7 .. 0.7
    strength = rng.uniform(0.45, 0.95)
    light = 1.0 - strength * (0.5 - ramp / 1.4)
    light *= 1.0 - rng.uniform(0.2, 0.6) * (u * u + v * v) * 2
    blotch = _smooth_noise(rng, height, width, min(height, width) * 0.25)
    light *= 1.0 + rng.uniform(0.0, 0.12) * blotch
    return np.asarray(np.clip(light, 0.15, 1.2), dtype=np.float32)


def _drop(
    rng: np.random.Generator, image: np.ndarray, s: int, zoom: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Darken a drop region with meniscus, rim and precipitate; returns (drop mask, inner distance)
    (``zoom`` > 1: the drop is that much larger than the frame's short side would make it)."""
    height, width = image.shape
    center = (width * rng.uniform(0.38, 0.62), height * rng.uniform(0.38, 0.62))
    radii = (s * zoom * rng.uniform(0.2, 0.34), s * zoom * rng.uniform(0.2, 0.34))
    mask = _blob_mask(rng, height, width, center, radii)
    inner = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outer = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    signed = np.clip(np.where(mask > 0, inner, -outer), -1e4, 1e4)  # no pixel outside: outer is huge
    width_px = s * rng.uniform(0.004, 0.012) + 1.0
    meniscus = np.exp(-(((signed - 0.5 * width_px) / width_px) ** 2))
    rim = np.exp(-(((signed + 1.2 * width_px) / (0.8 * width_px)) ** 2))
    tone = rng.uniform(0.72, 0.92)
    body = np.where(mask > 0, tone, 1.0).astype(np.float32)
    # Precipitate: fine speckle plus a coarser mottle, stronger near the edge of the drop.
    grain = _smooth_noise(rng, height, width, max(0.8, s * rng.uniform(0.0008, 0.002)))
    mottle = _smooth_noise(rng, height, width, s * rng.uniform(0.006, 0.015))
    amount = rng.uniform(0.01, 0.07)
    texture = amount * (0.7 * grain + 0.5 * mottle) * (mask > 0)
    image *= body + texture
    image *= 1.0 - rng.uniform(0.35, 0.75) * meniscus
    image += rng.uniform(0.0, 0.12) * rim
    if rng.random() < 0.3:  # a wrinkled skin: faint curved lines inside the drop
        skin = np.zeros_like(image)
        for _ in range(int(rng.integers(3, 12))):
            p = np.array(center) + rng.normal(0, 0.5, 2) * np.array(radii)
            pts = [p]
            heading = rng.uniform(0, 2 * np.pi)
            for _ in range(8):
                heading += rng.normal(0, 0.4)
                p = p + s * 0.02 * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p)
            line = np.round(np.array(pts) * 16).astype(np.int32)
            cv2.polylines(skin, [line], False, 1.0, thickness=max(1, s // 700), lineType=cv2.LINE_AA, shift=4)
        image *= 1.0 - rng.uniform(0.04, 0.12) * cv2.GaussianBlur(skin, (0, 0), 1.0) * (mask > 0)
    return mask, inner


def _dust(rng: np.random.Generator, image: np.ndarray, s: int) -> None:
    height, width = image.shape
    layer = np.zeros_like(image)
    for _ in range(int(rng.integers(3, 30))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(layer, centre, max(1, int(s * rng.uniform(0.0008, 0.004))), rng.uniform(0.2, 0.7), -1)
    if rng.random() < 0.3:  # a fibre
        p = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p]
        for _ in range(20):
            heading += rng.normal(0, 0.2)
            p = p + s * 0.012 * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p)
        cv2.polylines(layer, [np.round(np.array(pts)).astype(np.int32)], False, 0.5, max(1, s // 500))
    image *= 1.0 - cv2.GaussianBlur(layer, (0, 0), 0.8)


# ---------------------------------------------------------------------------------------------
# Crystals


def _render_crystal(
    rng: np.random.Generator,
    image: np.ndarray,
    habit: str,
    centre: tuple[float, float],
    size: float,
    s: int,
    blur: float,
) -> np.ndarray | None:
    """Composite one crystal into ``image`` (in place); return its full-size bool silhouette."""
    height, width = image.shape
    light = np.array([rng.normal(0, 0.6), rng.normal(0, 0.6), 1.0])
    light /= np.linalg.norm(light)
    polygons: list[tuple[np.ndarray, float, bool]] = []  # (xy, factor, is_face)
    silhouette_pts = []
    for solid, rotation in _solids(rng, habit, size):
        verts = solid.vertices @ rotation.T
        xy = verts[:, :2] + np.array(centre)
        silhouette_pts.append(xy)
        for face in solid.faces:
            p = verts[list(face)]
            normal = np.cross(p[1] - p[0], p[2] - p[0])
            norm = np.linalg.norm(normal)
            if norm == 0 or normal[2] / norm <= 1e-3:
                continue
            shade = float(np.dot(normal / norm, light))
            face_factor = 0.62 + 0.5 * shade + rng.normal(0, 0.05)
            polygons.append((xy[list(face)], face_factor, True))
    all_pts = np.vstack(silhouette_pts)
    margin = int(3 * blur + 4 + s * 0.01)
    x0 = max(0, int(np.floor(all_pts[:, 0].min())) - margin)
    y0 = max(0, int(np.floor(all_pts[:, 1].min())) - margin)
    x1 = min(width, int(np.ceil(all_pts[:, 0].max())) + margin + 1)
    y1 = min(height, int(np.ceil(all_pts[:, 1].max())) + margin + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    ch, cw = y1 - y0, x1 - x0
    alpha = np.zeros((ch, cw), np.uint8)
    for part in silhouette_pts:  # the silhouette: union of each solid's convex hull
        hull = cv2.convexHull(np.round((part - [x0, y0]) * 16).astype(np.int32))
        cv2.fillPoly(alpha, [hull], 1, lineType=cv2.LINE_8, shift=4)
    if alpha.sum() < 12:
        return None
    factor = np.ones((ch, cw), np.float32)
    edge_px = max(1, round(s / 900))
    for xy, f, _ in polygons:
        pts = np.round((xy - [x0, y0]) * 16).astype(np.int32)
        cv2.fillPoly(factor, [pts], float(f), lineType=cv2.LINE_AA, shift=4)
    for xy, _, _ in polygons:  # inner edges: thin, lighter than the outline
        pts = np.round((xy - [x0, y0]) * 16).astype(np.int32)
        cv2.polylines(factor, [pts], True, 0.45, thickness=edge_px, lineType=cv2.LINE_AA, shift=4)
    contours, _ = cv2.findContours(alpha, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = np.zeros((ch, cw), np.float32)
    cv2.drawContours(outline, contours, -1, 1.0, thickness=edge_px + 1)
    factor = np.where(alpha > 0, factor, 1.0) * (1.0 - rng.uniform(0.45, 0.8) * outline)
    if rng.random() < 0.3:  # an inclusion ("eye") near the centre
        ccx, ccy = int(centre[0] - x0), int(centre[1] - y0)
        r = max(1, int(size * rng.uniform(0.03, 0.07)))
        cv2.circle(factor, (ccx, ccy), r, 0.35, thickness=max(1, r // 2), lineType=cv2.LINE_AA)
    # Overall crystal tone: transparent crystals sit close to the background, some darker.
    factor = np.where(alpha > 0, factor * rng.uniform(0.6, 1.05), factor)
    weight = np.maximum(alpha.astype(np.float32), outline)
    if blur > 0:
        factor = cv2.GaussianBlur(factor, (0, 0), blur)
        weight = cv2.GaussianBlur(weight, (0, 0), blur)
    region = image[y0:y1, x0:x1]
    region *= 1.0 + weight * (np.clip(factor, 0.05, 1.6) - 1.0)
    full = np.zeros((height, width), bool)
    full[y0:y1, x0:x1] = alpha > 0
    return full


def _place_crystals(
    rng: np.random.Generator,
    image: np.ndarray,
    drop_inner: np.ndarray,
    s: int,
    max_crystals: int,
    habits: tuple[str, ...] | None,
    crystal_size: tuple[float, float] = (0.04, 0.15),
    min_crystals: int = 1,
) -> Iterator[tuple[np.ndarray, str, bool]]:
    """Yield (mask, habit, blurred) for each crystal composited, in drawing order."""
    ys, xs = np.nonzero(drop_inner > s * 0.03)
    if xs.size == 0:
        return
    count = int(rng.integers(min(min_crystals, max_crystals), max_crystals + 1))
    occupied = np.zeros(image.shape, bool)
    for _ in range(count):
        habit = (
            str(rng.choice(habits))
            if habits
            else str(rng.choice(HABITS, p=np.array(HABIT_WEIGHTS) / sum(HABIT_WEIGHTS)))
        )
        size = s * float(np.exp(rng.uniform(np.log(crystal_size[0]), np.log(crystal_size[1]))))
        for _attempt in range(6):
            k = int(rng.integers(0, xs.size))
            centre = (float(xs[k]) + rng.uniform(-0.5, 0.5), float(ys[k]) + rng.uniform(-0.5, 0.5))
            r = int(size * 0.5)
            cy, cx = int(centre[1]), int(centre[0])
            window = occupied[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1]
            # Mostly apart, some touching or overlapping (about 1 in 4 may land on another).
            if window.mean() < 0.15 or rng.random() < 0.25:
                break
        out_of_focus = bool(rng.random() < 0.2)
        blur = s * rng.uniform(0.0015, 0.004) if out_of_focus else 0.0
        mask = _render_crystal(rng, image, habit, centre, size, s, blur)
        if mask is None:
            continue
        occupied |= mask
        yield mask, habit, out_of_focus


def make_drop(
    seed: int,
    height: int = 512,
    width: int = 512,
    max_crystals: int = 8,
    *,
    rgb: bool = False,
    bit_depth: int = 8,
    habits: tuple[str, ...] | None = None,
    crystal_size: tuple[float, float] = (0.04, 0.15),
    min_crystals: int = 1,
    components: Components | None = None,
    dense: bool = False,
    significant_bits: int | None = None,
    msb_aligned: bool = False,
) -> SyntheticDrop:
    """One drop image with min_crystals..max_crystals crystals and their exact (occlusion-aware)
    masks; a crystal's size is drawn log-uniformly in ``crystal_size`` (fractions of the image's
    short side; the default matches the real drops, (0.005, 0.02) gives a large drop of small ones).

    ``components`` (default: all) adds what real imager photos contain (``realism``); ``dense``
    makes the frame a native-scale tile inside a drop holding 30-120 crystals of 10-20 px;
    ``significant_bits`` (12 or 14, 16-bit only) stores that many sensor bits, shifted to the top
    of the 16 when ``msb_aligned``."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth}")
    if height < 16 or width < 16:
        raise ValueError(f"image too small: {height}x{width}")
    if significant_bits is not None and (bit_depth != 16 or not 9 <= significant_bits <= 16):
        raise ValueError(f"significant_bits must be 9..16 for a 16-bit image, not {significant_bits}")
    parts = Components() if components is None else components
    rng = np.random.default_rng(seed)
    s = min(height, width)
    zoom = 3.0 if dense else 1.0
    if dense:
        lo, hi = 10.0 / s, 20.0 / s
        count = int(realism.stream(seed, "dense_small").integers(30, 121))
        crystal_size, min_crystals, max_crystals = (lo, hi), 30, count
    image = _background(rng, height, width, zoom)
    if (r := realism.fires(parts, "plastic", seed)) is not None:
        realism.plastic(r, image, int(s * zoom))
    drop_mask, drop_inner = _drop(rng, image, s, zoom)
    if (r := realism.fires(parts, "skins", seed)) is not None:
        realism.skins(r, image, drop_mask, drop_inner, s)
    _dust(rng, image, s)
    if (r := realism.fires(parts, "round_objects", seed)) is not None:
        realism.round_objects(r, image, drop_inner, s)
    if (r := realism.fires(parts, "cells", seed)) is not None:
        realism.cells(r, image, drop_inner, s)
    masks: list[np.ndarray] = []
    habit_list: list[str] = []
    blurred: list[bool] = []
    areas: list[int] = []
    crystals = _place_crystals(rng, image, drop_inner, s, max_crystals, habits, crystal_size, min_crystals)
    for mask, habit, out_of_focus in crystals:
        for i in range(len(masks)):
            masks[i] &= ~mask  # the new crystal lies on top
        masks.append(mask)
        areas.append(int(mask.sum()))
        habit_list.append(habit)
        blurred.append(out_of_focus)
    keep = [i for i, m in enumerate(masks) if m.sum() >= max(12, 0.5 * areas[i])]
    if (r := realism.fires(parts, "reflections", seed)) is not None:
        realism.reflection(r, image, drop_mask, s)
    image *= _illumination(rng, height, width)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 0.9))
    image += rng.normal(0, rng.uniform(0.004, 0.012), image.shape).astype(np.float32)
    if (r := realism.fires(parts, "optics", seed)) is not None:
        image = realism.optics(r, image, s)
    if rgb:
        tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.8, 0.95)], np.float32)
        colour = np.repeat(image[..., None], 3, axis=2) * tint
        colour[drop_mask > 0] *= np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.9, 1.0)], np.float32)
        image = colour
    pixels = realism.quantise(image, bit_depth, significant_bits, msb_aligned)
    return SyntheticDrop(
        image=pixels,
        masks=[masks[i] for i in keep],
        labels=[1] * len(keep),
        habits=[habit_list[i] for i in keep],
        out_of_focus=[blurred[i] for i in keep],
        significant_bits=significant_bits,  # checked above: only ever set for 16-bit
    )
