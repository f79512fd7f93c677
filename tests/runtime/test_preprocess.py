"""Tests for crystal_rt.runtime.preprocess against OpenCV and a float64 reference (contract steps 2-4)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crystal_rt.runtime.preprocess import apply_clahe, letterbox, letterbox_size, normalize
from crystal_rt.spec import PreprocessSpec


def _opencv_own_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR with Intel IPP off (the contract: OpenCV's own code on every platform)."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    finally:
        cv2.ipp.setUseIPP(before)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _smooth_image(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: type, lo: float, hi: float
) -> np.ndarray:
    """Low-frequency noise in [lo, hi] (more realistic for CLAHE than white noise)."""
    h, w = shape[:2]
    small = rng.random((max(2, h // 8), max(2, w // 8), *shape[2:]))
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big = (big - big.min()) / max(float(np.ptp(big)), 1e-9)
    out = lo + big * (hi - lo) + rng.normal(0, (hi - lo) * 0.02, size=big.shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(dtype).reshape(shape)


# --------------------------------------------------------------------------- CLAHE

CLAHE_CASES = [
    # (shape, tile_grid, clip_limit)
    ((97, 131), (8, 8), 2.0),
    ((64, 64), (8, 8), 2.0),
    ((53, 211), (4, 4), 1.0),
    ((301, 77), (3, 5), 4.0),
    ((129, 127), (16, 2), 0.5),
    ((45, 33), (1, 1), 40.0),
    ((250, 199), (7, 9), 3.0),
]


@pytest.mark.parametrize(("shape", "grid", "clip"), CLAHE_CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_clahe_gray_bit_exact(
    shape: tuple[int, int], grid: tuple[int, int], clip: float, dtype: type
) -> None:
    rng = _rng(shape[0] * 1000 + shape[1] + np.dtype(dtype).itemsize)
    top = np.iinfo(dtype).max
    for image in (
        rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype),
        _smooth_image(rng, shape, dtype, top * 0.2, top * 0.45),
    ):
        spec = PreprocessSpec.paper(clip_limit=clip, tile_grid=grid)
        before = image.copy()
        ours = apply_clahe(image, spec)
        ref = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(image)
        assert ours.dtype == dtype
        assert ours.shape == shape
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(image, before)  # input untouched


def test_clahe_changes_low_contrast_gray() -> None:
    image = _smooth_image(_rng(1), (120, 160), np.uint8, 100, 130)
    out = apply_clahe(image, PreprocessSpec())
    assert not np.array_equal(out, image)
    assert int(out.max()) - int(out.min()) > int(image.max()) - int(image.min())


@pytest.mark.parametrize(("shape", "grid", "clip"), CLAHE_CASES[:5])
def test_clahe_rgb_uint8_equals_lab_l_channel(
    shape: tuple[int, int], grid: tuple[int, int], clip: float
) -> None:
    rng = _rng(7)
    image = _smooth_image(rng, (*shape, 3), np.uint8, 40, 200)
    before = image.copy()
    ours = apply_clahe(image, PreprocessSpec.paper(clip_limit=clip, tile_grid=grid))

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    l_chan, a_chan, b_chan = cv2.split(lab)
    l_chan = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(l_chan)
    ref = cv2.cvtColor(cv2.merge([l_chan, a_chan, b_chan]), cv2.COLOR_LAB2RGB)

    assert ours.dtype == np.uint8
    assert ours.shape == (*shape, 3)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(image, before)


def test_clahe_rgb_is_not_bgr() -> None:
    """The image is RGB: converting it as if it were BGR gives another result."""
    rng = _rng(3)
    image = _smooth_image(rng, (90, 110, 3), np.uint8, 30, 220)
    image[..., 0] = image[..., 0] // 3  # make the channels clearly different
    ours = apply_clahe(image, PreprocessSpec())
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    as_bgr = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    assert not np.array_equal(ours, as_bgr)


@pytest.mark.parametrize(
    "image",
    [
        np.arange(60 * 70, dtype=np.uint8).reshape(60, 70),
        (np.arange(60 * 70 * 3, dtype=np.uint32) % 65536).astype(np.uint16).reshape(60, 70, 3),
        np.full((33, 45, 3), 120, dtype=np.uint8),
    ],
)
def test_clahe_off_returns_input(image: np.ndarray) -> None:
    out = apply_clahe(image, PreprocessSpec.paper(clahe=False))
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)


def test_clahe_rgb_uint16() -> None:
    image = _smooth_image(_rng(11), (101, 77, 3), np.uint16, 20000, 24000)
    before = image.copy()
    out = apply_clahe(image, PreprocessSpec())
    assert out.dtype == np.uint16
    assert out.shape == image.shape
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(image, before)
    # Contrast enhanced: the luminance spread grows.
    assert np.ptp(out.astype(np.float64).mean(axis=2)) > np.ptp(image.astype(np.float64).mean(axis=2))


def test_clahe_rgb_uint16_equalises_lab_l_as_documented() -> None:
    """The result's L channel is OpenCV's 16-bit CLAHE of the input's L (0..100) scaled to 0..65535
    (docs/contract.md), read back through OpenCV's float LAB: the scale is checked, not only that
    the contrast grew (L scaled by 655.35 / 1.01 is 1.4 L off at worst, 0.34 on average)."""
    gray = _smooth_image(_rng(13), (64, 80), np.uint16, 20000, 30000)
    image = np.repeat(gray[..., None], 3, axis=2)  # neutral: every L after CLAHE is in gamut
    spec = PreprocessSpec()
    out = apply_clahe(image, spec)
    to_lab = cv2.COLOR_RGB2LAB
    lum = np.rint(cv2.cvtColor(image.astype(np.float32) / 65535.0, to_lab)[..., 0] * 655.35).astype(np.uint16)
    assert spec.clahe is not None
    want = cv2.createCLAHE(spec.clahe.clip_limit, spec.clahe.tile_grid).apply(lum) / 655.35
    got = cv2.cvtColor(out.astype(np.float32) / 65535.0, to_lab)[..., 0]
    error = np.abs(got - want)  # OpenCV's float LAB round trip is good to about 0.2 L
    assert error.max() < 0.4 and error.mean() < 0.15, (error.max(), error.mean())


def test_clahe_rgb_uint16_gray_content_stays_gray() -> None:
    """Equal R=G=B in 16 bit stays (nearly) neutral: only the luminance is equalised."""
    gray = _smooth_image(_rng(12), (64, 80), np.uint16, 10000, 14000)
    image = np.repeat(gray[..., None], 3, axis=2)
    out = apply_clahe(image, PreprocessSpec()).astype(np.int64)
    assert not np.array_equal(out, image)
    assert int(np.abs(out[..., 0] - out[..., 1]).max()) <= 64
    assert int(np.abs(out[..., 1] - out[..., 2]).max()) <= 64


def test_clahe_real_images(real_images) -> None:
    """On the real drop images (read with cv2): bit-exact with cv2 for gray, manual LAB for RGB."""
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    spec = PreprocessSpec()
    for path in real_images:
        bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert bgr is not None
        if bgr.ndim == 2:
            np.testing.assert_array_equal(apply_clahe(bgr, spec), clahe.apply(bgr))
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        np.testing.assert_array_equal(apply_clahe(rgb, spec), cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


# --------------------------------------------------------------------------- letterbox

LETTERBOX_SHAPES = [
    (1, 1),
    (1, 700),
    (700, 1),
    (1, 37),
    (37, 1),
    (512, 512),
    (256, 256),
    (1024, 1224),
    (2028, 2532),
    (300, 200),
    (200, 300),
    (511, 513),
    (513, 511),
    (5, 1000),
    (333, 333),
]


@pytest.mark.parametrize(("h", "w"), LETTERBOX_SHAPES)
@pytest.mark.parametrize("size", [512, 256, 96])
def test_letterbox_size(h: int, w: int, size: int) -> None:
    scale, new_w, new_h = letterbox_size(h, w, size)
    assert scale == pytest.approx(size / max(h, w), rel=1e-12)
    assert new_w == max(1, int(w * (size / max(h, w)) + 0.5))
    assert new_h == max(1, int(h * (size / max(h, w)) + 0.5))
    assert max(new_w, new_h) == size
    assert 1 <= min(new_w, new_h) <= size


def test_letterbox_size_known_values() -> None:
    assert letterbox_size(1024, 1224, 512) == (512 / 1224, 512, 428)  # 1024*512/1224 = 428.3
    assert letterbox_size(2028, 2532, 512) == (512 / 2532, 512, 410)  # 410.08
    assert letterbox_size(300, 200, 512) == (512 / 300, 341, 512)  # 341.33
    assert letterbox_size(1, 700, 512) == (512 / 700, 512, 1)  # 0.73 -> 1
    assert letterbox_size(3, 1000, 512) == (0.512, 512, 2)  # 1.536 -> 2 (rounded half up)
    assert letterbox_size(1, 1000, 512) == (0.512, 512, 1)  # 0.512 -> 1
    assert letterbox_size(512, 512, 512) == (1.0, 512, 512)
    assert letterbox_size(128, 64, 256) == (2.0, 128, 256)


def test_letterbox_size_rounds_half_up() -> None:
    # 5 * (512/1024) = 2.5 -> 3 (banker's rounding would give 2)
    assert letterbox_size(5, 1024, 512)[2] == 3
    # 7 * (512/1024) = 3.5 -> 4
    assert letterbox_size(1024, 7, 512)[1] == 4


def _random_image(rng: np.random.Generator, h: int, w: int, channels: int, dtype: type) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    top = np.iinfo(dtype).max
    return rng.integers(1, top + 1, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize(("h", "w"), LETTERBOX_SHAPES)
@pytest.mark.parametrize(
    ("channels", "dtype"), [(1, np.uint8), (3, np.uint8), (1, np.uint16), (3, np.uint16)]
)
def test_letterbox_content(h: int, w: int, channels: int, dtype: type) -> None:
    size = 512
    rng = _rng(h * 7919 + w * 31 + channels)
    image = _random_image(rng, h, w, channels, dtype)
    canvas, scale = letterbox(image, size)
    _, new_w, new_h = letterbox_size(h, w, size)

    assert scale == size / max(h, w)
    assert canvas.dtype == dtype
    assert canvas.shape == ((size, size) if channels == 1 else (size, size, channels))
    expected = image if (new_w, new_h) == (w, h) else _opencv_own_resize(image, new_w, new_h)
    np.testing.assert_array_equal(canvas[:new_h, :new_w], expected)
    # The padding is black (the image has no zero pixels, so any misplacement shows up).
    assert not canvas[new_h:].any()
    assert not canvas[:, new_w:].any()


def test_letterbox_exact_size_is_identity() -> None:
    image = _random_image(_rng(5), 256, 256, 3, np.uint8)
    canvas, scale = letterbox(image, 256)
    assert scale == 1.0
    np.testing.assert_array_equal(canvas, image)
    assert canvas is not image  # a fresh canvas: writing into it must not change the input
    canvas[0, 0] = 0
    assert image[0, 0].all()


def test_letterbox_does_not_modify_input() -> None:
    image = _random_image(_rng(6), 300, 200, 1, np.uint16)
    before = image.copy()
    letterbox(image, 128)
    np.testing.assert_array_equal(image, before)


def test_letterbox_non_contiguous_input() -> None:
    base = _random_image(_rng(8), 200, 300, 3, np.uint8)
    view = base[::2, ::-1]  # non-contiguous, negative strides
    canvas, _ = letterbox(view, 128)
    _, new_w, new_h = letterbox_size(100, 300, 128)
    expected = _opencv_own_resize(np.ascontiguousarray(view), new_w, new_h)
    np.testing.assert_array_equal(canvas[:new_h, :new_w], expected)


# --------------------------------------------------------------------------- normalize


def _reference_normalize(canvas: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    top = 65535.0 if canvas.dtype == np.uint16 else 255.0
    x = canvas.astype(np.float64) / top
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    return ((x - mean) / std).transpose(2, 0, 1)[None]


@pytest.mark.parametrize(
    ("channels", "dtype"), [(3, np.uint8), (1, np.uint8), (3, np.uint16), (1, np.uint16)]
)
@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec.paper(input_size=64),
        PreprocessSpec.paper(input_size=64, mean=(0.1, 0.2, 0.9), std=(0.5, 2.0, 0.05)),
    ],
)
def test_normalize(channels: int, dtype: type, spec: PreprocessSpec) -> None:
    size = spec.input_size
    rng = _rng(channels * 100 + np.dtype(dtype).itemsize)
    canvas = _random_image(rng, size, size, channels, dtype)
    # Make sure the extremes are present.
    canvas.reshape(-1)[0] = 0
    canvas.reshape(-1)[1] = np.iinfo(dtype).max
    out = normalize(canvas, spec)
    assert out.shape == (1, 3, size, size)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    ref = _reference_normalize(canvas, spec)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    if channels == 1:
        # Replicated: the three planes differ only by their mean/std.
        for c in range(3):
            np.testing.assert_allclose(
                out[0, c].astype(np.float64) * spec.std[c] + spec.mean[c],
                canvas.astype(np.float64) / np.iinfo(dtype).max,
                atol=1e-5,
            )


def test_normalize_channel_order_rgb() -> None:
    """Channel c of the canvas goes to plane c (no BGR swap)."""
    spec = PreprocessSpec.paper(input_size=32)
    canvas = np.zeros((32, 32, 3), dtype=np.uint8)
    canvas[..., 0] = 255
    out = normalize(canvas, spec)
    assert out[0, 0] == pytest.approx(np.full((32, 32), (1 - spec.mean[0]) / spec.std[0]), abs=1e-5)
    assert out[0, 2] == pytest.approx(np.full((32, 32), -spec.mean[2] / spec.std[2]), abs=1e-5)


def test_uint16_scaled_by_65535_not_255() -> None:
    spec = PreprocessSpec.paper(input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    canvas = np.full((32, 32), 65535, dtype=np.uint16)
    np.testing.assert_allclose(normalize(canvas, spec), 1.0, atol=1e-6)
    canvas8 = np.full((32, 32), 255, dtype=np.uint8)
    np.testing.assert_allclose(normalize(canvas8, spec), 1.0, atol=1e-6)


def test_full_pipeline_matches_reference() -> None:
    """CLAHE -> letterbox -> normalize on an odd-sized gray uint16 image, against cv2 + float64."""
    spec = PreprocessSpec.paper(input_size=128, clip_limit=2.5, tile_grid=(4, 6))
    image = _smooth_image(_rng(21), (173, 97), np.uint16, 3000, 9000)
    out = normalize(letterbox(apply_clahe(image, spec), spec.input_size)[0], spec)

    eq = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(4, 6)).apply(image)
    _, new_w, new_h = letterbox_size(173, 97, 128)
    canvas = np.zeros((128, 128), dtype=np.uint16)
    canvas[:new_h, :new_w] = _opencv_own_resize(eq, new_w, new_h)
    np.testing.assert_allclose(out, _reference_normalize(canvas, spec), rtol=0, atol=1e-5)


def test_resize_ignores_the_threads_ipp_setting() -> None:
    """x86 wheels send 16-bit and float resizes to Intel IPP; ours is OpenCV's own code either way."""
    import cv2

    from crystal_rt.runtime.preprocess import resize_linear

    rng = np.random.default_rng(5)
    img16 = rng.integers(0, 65536, (300, 410), dtype=np.uint16)
    before = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(False)
        own = cv2.resize(img16, (157, 115), interpolation=cv2.INTER_LINEAR)
        cv2.ipp.setUseIPP(True)
        with_ipp_on = resize_linear(img16, 157, 115)
        assert cv2.ipp.useIPP()  # the caller's setting is restored
    finally:
        cv2.ipp.setUseIPP(before)
    np.testing.assert_array_equal(with_ipp_on, own)
