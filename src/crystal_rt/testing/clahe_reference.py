"""OpenCV's CLAHE in numpy, step by step as clahe-spec.md writes it, in both of OpenCV's arithmetics.

``clahe_reference(img, clip, grid, shift, fma=False)`` equals ``cv2.createCLAHE(clip, grid).apply``
of the x86-64 wheels (every float operation rounded); ``fma=True`` is the arithmetic of aarch64
builds, where the compiler contracts the interpolation into fused multiply-adds (spec 1.9):
``txf = fma(x, inv_tw, -0.5)``, ``top = fma(L11, xa1, L12*xa)``, ``res = fma(top, ya1, bot*ya)``.
``bitShift`` (``shift``) is OpenCV 5's. ``fma32`` is a correctly rounded float32 fused multiply-add
on numpy arrays. ``opencv_clahe_flavour()`` tells which arithmetic the installed cv2 uses.

Test support (also used by ``crystal-rt doctor``); not fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "Image processing")


def fma32(
    a: np.ndarray | np.floating | float,
    b: np.ndarray | np.floating | float,
    c: np.ndarray | np.floating | float,
) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (round to nearest even), elementwise."""
    a64 = np.asarray(a, np.float32).astype(np.float64)
    b64 = np.asarray(b, np.float32).astype(np.float64)
    c64 = np.asarray(c, np.float32).astype(np.float64)
    p = a64 * b64  # exact: 24 x 24 bits fit a double's 53
    s = p + c64
    t = s - p
    e = (p - (s - t)) + (c64 - t)  # two-sum: s + e == p + c exactly
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    d = s - r64
    toward = np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    neighbour = np.nextafter(r, toward)
    mid = (r64 + neighbour.astype(np.float64)) / 2
    # s sits exactly half-way between two floats: the discarded e decides (double rounding)
    fix = (d != 0) & (s == mid) & (np.sign(e) == np.sign(d))
    out: np.ndarray = np.where(fix, neighbour, r).astype(np.float32)
    return out


def _reflect101(p: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(p)
    p = p.copy()
    while True:
        lo, hi = p < 0, p >= n
        if not (lo.any() or hi.any()):
            return p
        p[lo] = -p[lo]
        p[hi] = 2 * n - 2 - p[hi]


def clahe_reference(
    img: np.ndarray, clip: float, grid: tuple[int, int], shift: int = 0, *, fma: bool = False
) -> np.ndarray:
    h, w = img.shape
    gx, gy = grid
    bits = 8 if img.dtype == np.uint8 else 16
    hs = (1 << bits) >> shift
    if w % gx == 0 and h % gy == 0:
        tw, th = w // gx, h // gy
    else:
        tw, th = (w + gx - w % gx) // gx, (h + gy - h % gy) // gy
    rows = _reflect101(np.arange(th * gy), h)
    cols = _reflect101(np.arange(tw * gx), w)
    ext = img[np.ix_(rows, cols)].astype(np.int64) >> shift
    area = tw * th
    clip_count = max(int(clip * area / hs), 1) if clip > 0 else 0
    scale = np.float32(hs - 1) / np.float32(area)
    luts = np.empty((gy, gx, hs), np.int64)
    for ty in range(gy):
        for tx in range(gx):
            hist = np.bincount(ext[ty * th : (ty + 1) * th, tx * tw : (tx + 1) * tw].ravel(), minlength=hs)
            if clip_count > 0:
                clipped = int(np.maximum(hist - clip_count, 0).sum())
                hist = np.minimum(hist, clip_count) + clipped // hs
                residual = clipped - (clipped // hs) * hs
                if residual:
                    step = max(hs // residual, 1)
                    hist[0:hs:step][:residual] += 1  # the sequential `i += step, residual--` loop
            cdf = np.cumsum(hist)
            luts[ty, tx] = np.clip(np.rint(cdf.astype(np.float32) * scale), 0, (1 << bits) - 1)

    def axis(n: int, t: int, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(n).astype(np.float32)
        inv = np.float32(1) / np.float32(t)
        f = fma32(pos, inv, -0.5) if fma else pos * inv - np.float32(0.5)
        lo = np.floor(f).astype(np.int64)
        wgt = (f - lo.astype(np.float32)).astype(np.float32)
        return np.maximum(lo, 0), np.minimum(lo + 1, tiles - 1), wgt, np.float32(1) - wgt

    x1, x2, xa, xa1 = axis(w, tw, gx)
    y1, y2, ya, ya1 = axis(h, th, gy)
    v = img.astype(np.int64) >> shift
    yy = np.arange(h)[:, None]

    def lut(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        values: np.ndarray = luts[ty[yy], tx[None, :], v].astype(np.float32)
        return values

    if fma:
        top = fma32(lut(y1, x1), xa1, lut(y1, x2) * xa)
        bot = fma32(lut(y2, x1), xa1, lut(y2, x2) * xa)
        res = fma32(top, ya1[:, None], bot * ya[:, None])
    else:
        top = lut(y1, x1) * xa1 + lut(y1, x2) * xa
        bot = lut(y2, x1) * xa1 + lut(y2, x2) * xa
        res = top * ya1[:, None] + bot * ya[:, None]
    out = np.clip(np.rint(res), 0, (1 << bits) - 1).astype(np.int64) << shift
    result: np.ndarray = out.astype(img.dtype)
    return result


def opencv_clahe_flavour(samples: int = 3, seed: int = 0) -> str:
    """``"plain"``, ``"fma"`` or ``"unknown"``: which arithmetic the installed cv2's CLAHE matches, on a
    few random 16-bit images with non-power-of-two tiles (where the two differ most)."""

    rng = np.random.default_rng(seed)
    plain = fused = True
    for i in range(samples):
        img = rng.integers(0, 65536, (97 + 10 * i, 131 + 7 * i), dtype=np.uint16)
        got = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(7, 5)).apply(img)
        plain = plain and np.array_equal(got, clahe_reference(img, 2.0, (7, 5)))
        fused = fused and np.array_equal(got, clahe_reference(img, 2.0, (7, 5), fma=True))
    if plain != fused:
        return "plain" if plain else "fma"
    return "unknown"
