"""Tests for crystal_rt.io.decode: every image is generated here (Pillow, cv2, tifffile)."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from crystal_rt.errors import ImageTooLarge, InvalidImage
from crystal_rt.io.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    PILLOW_FORMATS,
    list_images,
    read_image,
    read_image_info,
)
from crystal_rt.io.tiff import cmyk_to_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_DIR = REPO_ROOT / "tests" / "data" / "real"
REAL_SHAPES = {
    "97wo_01A_1.jpg": (1024, 1224, 3),
    "echo_test_im_1.jpg": (1024, 1224, 3),
    "big_crystals_3.jpg": (2028, 2532),
}

RNG = np.random.default_rng(0)


def _noise(shape: tuple[int, ...], dtype: type = np.uint8, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, size=shape, dtype=np.int64).astype(dtype)


def _save(path: Path, im: Image.Image, fmt: str, **kwargs: object) -> Path:
    im.save(path, format=fmt, **kwargs)
    return path


def _save_bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _png16(arr_rgb_or_gray: np.ndarray) -> bytes:
    """Encode uint16 gray or RGB(A) with cv2 (which wants BGR(A))."""
    arr = arr_rgb_or_gray
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _jpeg_bytes(shape: tuple[int, ...] = (256, 256, 3)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(_noise(shape)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _expect_error(source: object, fragment: str, name_in_message: str, **kwargs: object) -> InvalidImage:
    with pytest.raises(InvalidImage) as info:
        read_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert fragment in message
    assert name_in_message in message
    return info.value


# --- PNG ------------------------------------------------------------------------------------------


def test_gray8_png(tmp_path: Path) -> None:
    gray = _noise((30, 40))
    out = read_image(_save(tmp_path / "g8.png", Image.fromarray(gray), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (30, 40) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, gray)


def test_gray16_png_keeps_values_above_255(tmp_path: Path) -> None:
    gray = _noise((30, 40), np.uint16, 65536)
    gray[0, 0] = 60000
    path = tmp_path / "g16.png"
    path.write_bytes(_png16(gray))
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (30, 40)
    np.testing.assert_array_equal(out, gray)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb16_png_keeps_order_and_depth(tmp_path: Path, channels: int) -> None:
    rgb = np.zeros((20, 30, channels), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 30000, 65000
    if channels == 4:
        rgb[..., 3] = 123
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16(rgb))
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb[..., :3])


def test_rgba_png_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgba = _noise((10, 12, 4))
    rgba[..., 3] = 0
    out = read_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_gray_alpha_png_drops_alpha(tmp_path: Path) -> None:
    la = _noise((8, 9, 2))
    out = read_image(_save(tmp_path / "la.png", Image.fromarray(la, "LA"), "PNG"))
    assert out.shape == (8, 9) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, la[..., 0])


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_png_gives_rgb(tmp_path: Path, transparency: int | None) -> None:
    im = Image.fromarray(_noise((16, 20, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    extra = {} if transparency is None else {"transparency": transparency}
    out = read_image(_save(tmp_path / "p.png", im, "PNG", **extra))
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))


def test_one_bit_png_gives_0_and_255(tmp_path: Path) -> None:
    bits = _noise((10, 10), high=2).astype(bool)
    out = read_image(_save(tmp_path / "b.png", Image.fromarray(bits), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (10, 10)
    assert set(np.unique(out).tolist()) == {0, 255}
    np.testing.assert_array_equal(out, bits.astype(np.uint8) * 255)


def test_png_named_jpg_is_sniffed(tmp_path: Path) -> None:
    rgb = _noise((5, 7, 3))
    out = read_image(_save(tmp_path / "really_png.jpg", Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(out, rgb)


# --- JPEG, BMP ------------------------------------------------------------------------------------


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "rgb.jpg"
    path.write_bytes(_jpeg_bytes((48, 64, 3)))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and out.flags.c_contiguous


def test_cmyk_jpeg_gives_rgb(tmp_path: Path) -> None:
    im = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # pure cyan
    out = read_image(_save(tmp_path / "cmyk.jpg", im, "JPEG", quality=95))
    assert out.dtype == np.uint8 and out.shape == (8, 16, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), [0, 255, 255], atol=8)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im = Image.fromarray(_noise((20, 40, 3)))  # 40 wide, 20 high as stored
    path = _save(tmp_path / "rot.jpg", im, "JPEG", exif=exif.tobytes())
    out = read_image(path)
    with Image.open(path) as stored:  # the stored pixels, as Pillow decodes them, not turned
        upright = np.rot90(np.asarray(stored.convert("RGB")), -1)  # turned 90° clockwise by hand
    assert out.shape == (40, 20, 3)
    np.testing.assert_array_equal(out, upright)  # pixel for pixel: not turned the other way, not flipped


def test_bmp(tmp_path: Path) -> None:
    rgb = _noise((9, 11, 3))
    out = read_image(_save(tmp_path / "x.bmp", Image.fromarray(rgb), "BMP"))
    np.testing.assert_array_equal(out, rgb)


# --- TIFF -----------------------------------------------------------------------------------------


def test_tiff16_gray(tmp_path: Path) -> None:
    gray = _noise((12, 14), np.uint16, 65536)
    tifffile.imwrite(tmp_path / "g.tif", gray)
    out = read_image(tmp_path / "g.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, gray)


@pytest.mark.parametrize("planar", [False, True])
def test_tiff16_rgb(tmp_path: Path, planar: bool) -> None:
    rgb = _noise((12, 14, 3), np.uint16, 65536)
    data = np.moveaxis(rgb, -1, 0) if planar else rgb
    tifffile.imwrite(
        tmp_path / "rgb.tiff", data, photometric="rgb", planarconfig="separate" if planar else "contig"
    )
    out = read_image(tmp_path / "rgb.tiff")
    assert out.dtype == np.uint16 and out.shape == (12, 14, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_tiff_multipage_uses_first_page(tmp_path: Path) -> None:
    pages = _noise((3, 10, 11), np.uint16, 65536)
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), pages[0])


@pytest.mark.parametrize("shape", [(1, 7, 3), (1, 7), (5, 1), (1, 1, 6, 4)])
def test_tiff_thin_images_keep_their_layout(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = _noise(shape)
    tifffile.imwrite(tmp_path / "thin.tif", data, photometric="rgb" if shape[-1] in (3, 4) else None)
    out = read_image(tmp_path / "thin.tif")
    squeezed = data.reshape(data.shape[-3:]) if data.ndim > 3 else data
    expected = squeezed[..., :3] if squeezed.ndim == 3 else squeezed
    np.testing.assert_array_equal(out, expected)


OTHER_PIXEL_TYPES = [
    np.array([[0, 100], [-100, 127]], np.int8),
    np.array([[0, 300], [-5, 4000]], np.int16),
    np.array([[-5, 300], [100000, 7]], np.int32),
    np.array([[0, 5], [70000, 1]], np.int64),
    np.array([[0, 70000], [5, 1]], np.uint32),
    np.array([[0, 5], [1, 2]], np.uint64),
    np.array([[0.0, 0.5], [1.0, 0.25]], np.float16),
    np.array([[0.0, 0.5], [1.0, 0.25]], np.float32),  # 0-1
    np.array([[0.0, 128.0], [255.0, 3.0]], np.float32),  # 0-255
    np.array([[0.0, 0.5], [1.0, 0.25]], np.float64),
    np.array([[0.1, np.nan], [1.0, 0.0]], np.float32),
    np.array([[1 + 1j, 0], [2, 3]], np.complex64),
]
OTHER_IDS = [f"{a.dtype}-{i}" for i, a in enumerate(OTHER_PIXEL_TYPES)]


@pytest.mark.parametrize("values", OTHER_PIXEL_TYPES, ids=OTHER_IDS)
def test_tiff_of_other_pixel_types_is_refused(tmp_path: Path, values: np.ndarray) -> None:
    """Signed, wider, float and complex TIFFs were clipped or scaled into a guessed range (a 0-255
    float image became nearly black, complex lost its imaginary part): now one sentence."""
    path = tmp_path / f"{values.dtype}.tif"
    tifffile.imwrite(path, values)
    err = _expect_error(path, f"unsupported pixel type {values.dtype}", path.name)
    assert "convert it to 8- or 16-bit" in str(err)


def test_bilevel_tiff_gives_0_and_255(tmp_path: Path) -> None:
    bits = _noise((6, 16), high=2).astype(bool)
    tifffile.imwrite(tmp_path / "b.tif", bits, photometric="minisblack")
    out = read_image(tmp_path / "b.tif")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, bits.astype(np.uint8) * 255)


def test_four_bit_tiff_is_scaled_to_8_bits(tmp_path: Path) -> None:
    """tifffile hands 4-bit samples over as 0..15; they are scaled to 0..255 (x 17)."""
    values = (np.arange(32, dtype=np.uint8) % 16).reshape(4, 8)
    tifffile.imwrite(tmp_path / "g4.tif", values, bitspersample=4, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "g4.tif"), values * 17)


def test_gray_with_alpha_tiff_gives_gray(tmp_path: Path) -> None:
    gray_alpha = _noise((5, 6, 2))
    tifffile.imwrite(tmp_path / "ga.tif", gray_alpha, photometric="minisblack", extrasamples=[2])
    np.testing.assert_array_equal(read_image(tmp_path / "ga.tif"), gray_alpha[..., 0])


# --- TIFF compression (imagecodecs) ---------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits", "zstd"])
@pytest.mark.parametrize("kind", ["gray8", "rgb8", "gray16"])
def test_compressed_tiff_reads_back_equal(tmp_path: Path, compression: str, kind: str) -> None:
    """LZW needed imagecodecs, which was missing: "truncated or corrupt TIFF ... requires the
    'imagecodecs' package"."""
    shape = (40, 50, 3) if kind == "rgb8" else (40, 50)
    data = _noise(shape, np.uint16, 65536) if kind == "gray16" else _noise(shape)
    path = tmp_path / f"{kind}-{compression}.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="rgb" if kind == "rgb8" else None)
    np.testing.assert_array_equal(read_image(path), data)


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_jpeg_tiff_reads_back_close(tmp_path: Path, kind: str) -> None:
    """JPEG in TIFF: tifffile stores RGB as YCbCr (photometric 6) and hands RGB back."""
    smooth = cv2.GaussianBlur(_noise((64, 80, 3)), (0, 0), 3)
    data = smooth if kind == "rgb" else np.ascontiguousarray(smooth[..., 1])
    path = tmp_path / f"{kind}-jpeg.tif"
    tifffile.imwrite(path, data, compression="jpeg", compressionargs={"level": 95})
    if kind == "rgb":
        with tifffile.TiffFile(path) as tif:
            assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.YCBCR
    out = read_image(path)
    assert out.shape == data.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - data).mean() < 2.0


def test_truncated_lzw_tiff(tmp_path: Path) -> None:
    buf = io.BytesIO()
    tifffile.imwrite(buf, _noise((64, 64)), compression="lzw")
    (tmp_path / "cut.tif").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _expect_error(tmp_path / "cut.tif", "truncated or corrupt TIFF", "cut.tif")


# --- TIFF photometric interpretation --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_min_is_white_tiff_is_inverted(tmp_path: Path, dtype: type) -> None:
    top = np.iinfo(dtype).max
    gray = _noise((20, 30), dtype, top + 1)
    tifffile.imwrite(tmp_path / "w.tif", top - gray, photometric="miniswhite")
    out = read_image(tmp_path / "w.tif")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, gray)


def test_min_is_white_inverts_within_the_significant_bits(tmp_path: Path) -> None:
    """A 12-bit MinIsWhite image (MaxSampleValue 4095): black is 4095, not 65535."""
    gray = _noise((8, 9), np.uint16, 4096)
    tifffile.imwrite(
        tmp_path / "w12.tif", 4095 - gray, photometric="miniswhite", extratags=[(281, "H", 1, 4095, True)]
    )
    info = read_image_info(tmp_path / "w12.tif")
    assert info.bit_depth == 12
    np.testing.assert_array_equal(info.pixels, gray)


def test_bilevel_min_is_white_tiff(tmp_path: Path) -> None:
    bits = _noise((4, 16), high=2).astype(bool)
    tifffile.imwrite(tmp_path / "bw.tif", bits, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "bw.tif"), (~bits).astype(np.uint8) * 255)


def _palette_of(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, 8-bit palette (N, 3), the RGB image the palette gives) of an adaptive palette."""
    im = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    indices = np.asarray(im)
    palette = np.array(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    palette = np.vstack([palette, np.zeros((256 - len(palette), 3), np.uint8)])
    return indices, palette, palette[indices]


@pytest.mark.parametrize("scale", [257, 256, 1])
def test_palette_tiff_applies_its_colour_map(tmp_path: Path, scale: int) -> None:
    """TIFF colour maps are 16-bit: v x 257 (the spec), v x 256 (v << 8) and plain 8-bit values (some
    writers) all give the 8-bit colours. Was: the indices, as gray."""
    indices, palette, expected = _palette_of(_noise((24, 32, 3)))
    tifffile.imwrite(
        tmp_path / "p.tif", indices, photometric="palette", colormap=palette.T.astype(np.uint16) * scale
    )
    out = read_image(tmp_path / "p.tif")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, expected)


def test_palette_tiff_with_16_bit_colours_gives_16_bit_rgb(tmp_path: Path) -> None:
    colormap = np.stack([np.arange(256) * 200 + 7, np.arange(256) * 100, np.full(256, 40000)]).astype(
        np.uint16
    )
    indices = _noise((6, 7))
    tifffile.imwrite(tmp_path / "p16.tif", indices, photometric="palette", colormap=colormap)
    out = read_image(tmp_path / "p16.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, colormap.T[indices])


def _cmyk_of(rgb: np.ndarray) -> np.ndarray:
    """CMYK with black generation (K = 255 - max(R, G, B)), as prepress software makes it."""
    rgb_i = rgb.astype(np.int64)
    k = 255 - rgb_i.max(axis=2, keepdims=True)
    white = np.maximum(255 - k, 1)
    cmy = 255 - np.rint(rgb_i * 255 / white)
    return np.concatenate([np.clip(cmy, 0, 255), k], axis=2).astype(np.uint8)


def test_cmyk_tiff_gives_rgb(tmp_path: Path) -> None:
    """Was: C, M and Y read as R, G and B (K dropped as alpha): a negative."""
    rgb = _noise((20, 24, 3))
    tifffile.imwrite(tmp_path / "cmyk.tif", _cmyk_of(rgb), photometric="separated")
    out = read_image(tmp_path / "cmyk.tif")
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).max() <= 1


def test_cmyk_formula() -> None:
    cmyk = np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0], [128, 64, 0, 128]]], np.uint8)
    expected = [[[0, 255, 255], [0, 0, 0], [255, 255, 255], [63, 95, 127]]]
    np.testing.assert_array_equal(cmyk_to_rgb(cmyk), expected)  # (255 - C) * (255 - K) / 255, rounded


def test_uncompressed_ycbcr_tiff_gives_rgb(tmp_path: Path) -> None:
    rgb = _noise((16, 18, 3))
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]  # BT.601 full range: TIFF's defaults
    tifffile.imwrite(tmp_path / "ycc.tif", ycc, photometric="ycbcr", subsampling=(1, 1))
    out = read_image(tmp_path / "ycc.tif")
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - rgb).max() <= 2


def test_unsupported_photometric_and_ink_sets_are_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "lab.tif", _noise((4, 5, 3)), photometric="cielab")
    _expect_error(tmp_path / "lab.tif", "unsupported TIFF photometric interpretation CIELAB", "lab.tif")
    tifffile.imwrite(
        tmp_path / "inks.tif", _noise((4, 5, 4)), photometric="separated", extratags=[(332, "H", 1, 2, True)]
    )
    _expect_error(tmp_path / "inks.tif", "ink set 2", "inks.tif")


# --- bit depth from the file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([(281, "H", 1, 4095, True)], 12),
        ([(341, "H", 1, 16383, True)], 14),
        ([(281, "H", 3, (4095, 4095, 1023), True)], 12),
        ([(281, "H", 1, 65535, True)], None),
        ([], None),
    ],
    ids=["MaxSampleValue-4095", "SMaxSampleValue-16383", "per-sample", "MaxSampleValue-65535", "no-tag"],
)
def test_tiff_bit_depth_from_max_sample_value(
    tmp_path: Path, tags: list[tuple], expected: int | None
) -> None:
    rgb = tags and tags[0][2] == 3
    data = _noise((6, 7, 3) if rgb else (6, 7), np.uint16, 1024)
    tifffile.imwrite(tmp_path / "t.tif", data, photometric="rgb" if rgb else None, extratags=tags)
    info = read_image_info(tmp_path / "t.tif")
    assert info.bit_depth == expected
    np.testing.assert_array_equal(info.pixels, data)  # the decoder never rescales: the pipeline does


def test_packed_12_bit_tiff_gives_12_bits(tmp_path: Path) -> None:
    data = _noise((6, 7), np.uint16, 4096)
    tifffile.imwrite(tmp_path / "p12.tif", data, bitspersample=12)
    info = read_image_info(tmp_path / "p12.tif")
    assert info.bit_depth == 12
    np.testing.assert_array_equal(info.pixels, data)


def test_bit_depth_is_for_16_bit_images_only(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t8.tif", _noise((6, 7), high=16), extratags=[(281, "H", 1, 15, True)])
    assert read_image_info(tmp_path / "t8.tif").bit_depth is None
    assert read_image_info(_noise((6, 7), np.uint16, 4096)).bit_depth is None  # an array says nothing


def _with_sbit(png: bytes, values: bytes) -> bytes:
    """``png`` with an sBIT chunk inserted after IHDR."""
    chunk = b"sBIT" + values
    sbit = len(values).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    return png[:33] + sbit + png[33:]


@pytest.mark.parametrize(
    ("channels", "sbit", "shift", "expected"),
    [
        (1, b"\x0c", 0, 12),  # LSB-aligned 12-bit data
        (1, b"\x0c", 4, 16),  # sBIT 12, samples scaled to 16 bits (the PNG spec's way): nothing to expand
        (3, b"\x0e\x0e\x0e", 0, 14),
        (4, b"\x0a\x0a\x0a\x10", 0, 10),  # RGBA: alpha's 16 bits do not count
        (1, b"\x10", 0, 16),
        (1, None, 0, None),
    ],
    ids=["gray-lsb", "gray-msb", "rgb-lsb", "rgba-lsb", "sbit-16", "no-sbit"],
)
def test_png_bit_depth_from_sbit(
    tmp_path: Path, channels: int, sbit: bytes | None, shift: int, expected: int | None
) -> None:
    bits = 10 if channels == 4 else 14 if channels == 3 else 12
    shape = (9, 10) if channels == 1 else (9, 10, channels)
    data = _noise(shape, np.uint16, 1 << bits) << shift
    data.flat[0] = ((1 << bits) - 1) << shift
    png = _png16(data)
    path = tmp_path / "s.png"
    path.write_bytes(png if sbit is None else _with_sbit(png, sbit))
    info = read_image_info(path)
    assert info.bit_depth == expected
    np.testing.assert_array_equal(info.pixels, data if channels == 1 else data[..., :3])


def test_sbit_of_an_8_bit_png_is_ignored(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise((5, 6), high=64)).save(buf, format="PNG")
    (tmp_path / "s8.png").write_bytes(_with_sbit(buf.getvalue(), b"\x06"))
    info = read_image_info(tmp_path / "s8.png")
    assert info.pixels.dtype == np.uint8 and info.bit_depth is None


# --- files that are not (usable) images -----------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "fragment"),
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.txt", b"crystal drop A1: clear\n", "not a recognised image format"),
        ("page.html", b"<!DOCTYPE html><html><body>404</body></html>", "not a recognised image format"),
        ("model.onnx", b"\x08\x07\x12\x07pytorch\x1a\x052.4.0" + bytes(200), "not a recognised image format"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + bytes(5), "not a recognised image format"),
    ],
)
def test_non_images_are_refused(tmp_path: Path, filename: str, content: bytes, fragment: str) -> None:
    (tmp_path / filename).write_bytes(content)
    _expect_error(tmp_path / filename, fragment, filename)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
OTHER_FORMATS = [
    ("drop.eps", EPS, "PostScript / EPS"),
    ("drop.ps", b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n", "PostScript / EPS"),
    ("dos.eps", b"\xc5\xd0\xd3\xc6" + bytes(28), "EPS"),
    ("plate.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    ("layers.psd", b"8BPS\x00\x01" + bytes(40), "Photoshop (PSD)"),
    ("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "GIF"),
    ("photo.webp", b"RIFF\x1a\x00\x00\x00WEBPVP8 " + bytes(20), "WebP"),
    ("frame.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<u2'}", "a NumPy .npy array"),
]


@pytest.mark.parametrize(("filename", "content", "kind"), OTHER_FORMATS, ids=[f[0] for f in OTHER_FORMATS])
def test_undocumented_formats_are_refused_by_name(
    tmp_path: Path, filename: str, content: bytes, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow opens only JPEG, PNG and BMP here: EPS would go to Ghostscript (a subprocess)."""
    import subprocess

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    (tmp_path / filename).write_bytes(content)
    err = _expect_error(tmp_path / filename, f"not a supported image format: {kind}", filename)
    assert "crystal-rt reads JPEG, PNG, TIFF and BMP" in str(err) and "\n" not in str(err)


def test_pillow_alone_would_open_eps() -> None:
    """What the format list prevents: Pillow by itself identifies the EPS (and would run Ghostscript
    to load it)."""
    with Image.open(io.BytesIO(EPS)) as im:
        assert im.format == "EPS"
    assert set(PILLOW_FORMATS) == {"JPEG", "PNG", "BMP"}


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "absent.png", "file not found", "absent.png")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    _expect_error(tmp_path / "folder.png", "directory", "folder.png")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "half.jpg", "truncated or corrupt JPEG", "half.jpg")


@pytest.mark.parametrize("depth16", [False, True])
def test_truncated_png(tmp_path: Path, depth16: bool) -> None:
    if depth16:
        data = _png16(_noise((64, 64, 3), np.uint16, 65536))
    else:
        buf = io.BytesIO()
        Image.fromarray(_noise((64, 64, 3))).save(buf, format="PNG")
        data = buf.getvalue()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "half.png", "truncated or corrupt PNG", "half.png")


def test_truncated_tiff(tmp_path: Path) -> None:
    buf = io.BytesIO()
    tifffile.imwrite(buf, _noise((64, 64), np.uint16, 65536))
    (tmp_path / "half.tif").write_bytes(buf.getvalue()[:100])
    _expect_error(tmp_path / "half.tif", "TIFF", "half.tif")


# --- decompression bombs --------------------------------------------------------------------------


def _png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A real small PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[24], data[25] = depth, colour
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (10000, 9000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_claiming(width, height))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own DecompressionBombWarning must not surface
        err = _expect_error(tmp_path / "bomb.png", str(width * height), "bomb.png")
    assert time.perf_counter() - start < 1.0
    assert "too large" in str(err)


def test_max_pixels_applies_to_every_decoder(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((10, 10), np.uint16))
    (tmp_path / "c16.png").write_bytes(_png16(np.zeros((10, 10, 3), np.uint16)))
    (tmp_path / "j.jpg").write_bytes(_jpeg_bytes((10, 10, 3)))
    for name in ("t.tif", "j.jpg"):
        _expect_error(tmp_path / name, "100 pixels", name, max_pixels=99)
        assert read_image(tmp_path / name, max_pixels=100).shape[:2] == (10, 10)
    # 16-bit RGB: 6 bytes a pixel count as 1.5 pixels
    _expect_error(tmp_path / "c16.png", "count as 150 pixels", "c16.png", max_pixels=149)
    assert read_image(tmp_path / "c16.png", max_pixels=150).shape[:2] == (10, 10)
    assert DEFAULT_MAX_PIXELS == 80_000_000


def test_many_samples_per_pixel_count_in_max_pixels(tmp_path: Path) -> None:
    """A 250-sample TIFF and a 16-bit RGBA PNG bomb within the pixel count: refused unread."""
    cube = np.zeros((200, 200, 250), np.uint8)
    tifffile.imwrite(
        tmp_path / "cube.tif", cube, compression="zlib", photometric="minisblack", planarconfig="contig"
    )
    assert (tmp_path / "cube.tif").stat().st_size < 1_000_000
    err = _expect_error(
        tmp_path / "cube.tif",
        "250 sample(s) x 1 byte(s) count as 2500000 pixels",
        "cube.tif",
        max_pixels=2_000_000,
    )
    assert "refused before decoding" in str(err)
    (tmp_path / "rgba16.png").write_bytes(_png_claiming(9000, 8000, depth=16, colour=6))  # 72 M pixels
    err = _expect_error(tmp_path / "rgba16.png", "count as 144000000 pixels", "rgba16.png")
    assert "refused before decoding" in str(err)


# --- bombs that declare their allocation elsewhere than width x height (issue 29) ----------------


class _Decoded(BaseException):
    """Raised in place of decoding: a bomb's pixels must never be decoded (not an Exception, so that
    no decoder's error handling turns it into an InvalidImage)."""


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every decoder's pixel step (tifffile's page.asarray, Pillow's load, cv2.imdecode) raises."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise _Decoded("the pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)


def _retag(data: bytes, changes: dict[int, tuple[int, int]]) -> bytes:
    """``data`` with the first page's tags ``code`` renumbered and set: {old code: (new code, value)}
    (LONG or SHORT values in the IFD entry): how a bomb's few bytes are written."""
    out = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for code, (new_code, value) in changes.items():
            tag = tif.pages.first.tags[code]
            struct.pack_into("<H", out, tag.offset, new_code)
            struct.pack_into("<I" if int(tag.dtype) == 4 else "<H", out, tag.valueoffset, value)
    return bytes(out)


def _tiff_bytes(arr: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)  # type: ignore[arg-type]
    return buf.getvalue()


def _image_depth_bomb(side: int, depth: int) -> bytes:
    """A side x side Deflate TIFF whose ImageDepth (32997) says ``depth`` planes: a private tag that
    tifffile writes, renumbered (tifffile refuses to write ImageDepth as an extra tag)."""
    plain = _tiff_bytes(
        np.zeros((side, side), np.uint8), compression="zlib", extratags=[(65000, "I", 1, 1, True)]
    )
    return _retag(plain, {65000: (32997, depth)})


def _tile_bomb(tile: int, compression: str) -> bytes:
    """A 16x16 image stored in one ``tile`` x ``tile`` tile (TileWidth and TileLength rewritten)."""
    plain = _tiff_bytes(np.zeros((16, 16), np.uint8), compression=compression, tile=(16, 16))
    return _retag(plain, {322: (322, tile), 323: (323, tile)})


@pytest.mark.usefixtures("no_decoding")
def test_tiff_image_depth_bomb_is_refused_unread() -> None:
    """The issue's bomb: a 1000x1000 TIFF of ImageDepth 3000 (3 GB decoded) in 1.4 KB."""
    bomb = _image_depth_bomb(1000, 3000)
    assert len(bomb) < 2000
    with pytest.raises(ImageTooLarge) as err:
        read_image(bomb, name="depth.tif")
    assert "1000x1000x3000 (ImageDepth 3000) = 3000000000 pixels" in str(err.value)
    assert "refused before decoding" in str(err.value) and err.value.path == "depth.tif"


@pytest.mark.usefixtures("no_decoding")
def test_tiff_volume_within_the_limit_is_refused_unread() -> None:
    _expect_error(
        _image_depth_bomb(16, 3), "unsupported TIFF layout: ImageDepth 3", "vol.tif", name="vol.tif"
    )
    with pytest.raises(ImageTooLarge, match="16x16x3 "):  # the depth counts in the limit
        read_image(_image_depth_bomb(16, 3), name="vol.tif", max_pixels=16 * 16 * 3 - 1)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize("compression", ["zstd", "zlib"])
def test_tiff_tile_bomb_is_refused_unread(compression: str) -> None:
    """The issue's other bomb: a 16x16 image in one 32768 x 32768 tile (1 GB decoded)."""
    bomb = _tile_bomb(32768, compression)
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLarge) as err:
        read_image(bomb, name="tile.tif")
    assert "its tile of 32768x32768 = 1073741824 pixels, more than the limit of 80000000" in str(err.value)
    assert "refused before decoding" in str(err.value)
    with pytest.raises(ImageTooLarge, match="its tile of 1024x1024"):  # a tile counts however small the image
        read_image(_tile_bomb(1024, compression), name="tile.tif", max_pixels=1024 * 1024 - 1)


def _jpeg_tile_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG-compressed tiled TIFF whose tile's frame header (SOF) claims width x height."""
    data = bytearray(_tiff_bytes(_noise((16, 16, 3)), compression="jpeg", tile=(16, 16)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset = int(tif.pages.first.dataoffsets[0])
    sof = data.index(b"\xff\xc0", offset)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@pytest.mark.usefixtures("no_decoding")
def test_jpeg_tile_declaring_more_than_its_tile_is_refused_unread() -> None:
    """libjpeg allocates what the segment's SOF says, not the tile size the TIFF tags give."""
    with pytest.raises(ImageTooLarge, match="its JPEG tile 0 of 60000x60000 = 3600000000 pixels"):
        read_image(_jpeg_tile_claiming(60000, 60000), name="jt.tif")
    _expect_error(
        _jpeg_tile_claiming(64, 64),
        "JPEG tile 0 declares 64x64 pixels, more than its 16x16 tile; refused before decoding",
        "jt.tif",
        name="jt.tif",
    )


def test_tiled_jpeg_tiff_still_reads() -> None:
    """Edge tiles (40x56 in 16x16 tiles) pass the frame check: the pixels tifffile decodes."""
    data = _tiff_bytes(_noise((40, 56, 3)), compression="jpeg", tile=(16, 16))
    out = read_image(data)
    assert out.shape == (40, 56, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, tifffile.imread(io.BytesIO(data)))


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(("compression", "name"), [("png", "PNG (34933)"), ("webp", "WEBP (50001)")])
def test_tiff_compression_sized_by_its_own_data_is_refused_unread(compression: str, name: str) -> None:
    """PNG, WebP, JPEG 2000, ... tiles decode to whatever their own header says: refused by name."""
    data = _tiff_bytes(_noise((16, 16, 3)), compression=compression, tile=(16, 16), photometric="rgb")
    _expect_error(data, f"unsupported TIFF compression {name}", "c.tif", name="c.tif")


@pytest.mark.usefixtures("no_decoding")
def test_png_jpeg_bmp_bombs_are_refused_before_decoding() -> None:
    """Over max_pixels (80 M) but under Pillow's own bomb error (179 M): only our check stops them."""
    w, h = 10000, 9000
    png = _png_claiming(w, h)
    png16 = _png_claiming(w, h, depth=16, colour=2)  # the OpenCV path
    jpeg = bytearray(_jpeg_bytes((16, 16, 3)))
    sof = jpeg.index(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, h, w)
    bmp = bytearray(_save_bytes(Image.fromarray(_noise((4, 4, 3))), "BMP"))
    struct.pack_into("<ii", bmp, 18, w, h)  # BITMAPINFOHEADER width, height
    for data in (png, png16, bytes(jpeg), bytes(bmp)):
        with pytest.raises(ImageTooLarge) as err:
            read_image(data, name="bomb")
        assert "refused before decoding" in str(err.value) and "10000x9000" in str(err.value)


def test_file_over_max_bytes_is_refused_unread(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", Image.fromarray(_noise((40, 40))), "PNG")
    size = path.stat().st_size
    with pytest.raises(ImageTooLarge) as err:
        read_image(path, max_bytes=size - 1)
    assert f"file too large: {size} bytes, more than the limit of {size - 1}; not read" in str(err.value)
    assert read_image(path, max_bytes=size).shape == (40, 40)


def test_special_files_are_refused_by_kind(tmp_path: Path) -> None:
    """(A named pipe: tests/serve/test_bad_inputs.py, guarded against the hang it caused.)"""
    _expect_error(Path("/dev/null"), "is a character device, not a regular file", "/dev/null")
    _expect_error(tmp_path, "is a directory, not an image file", str(tmp_path))


def test_zero_size_png_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(_png_claiming(0, 8))
    _expect_error(tmp_path / "zero.png", "", "zero.png")


# --- bytes and arrays -----------------------------------------------------------------------------


def test_bytes_input() -> None:
    rgb = _noise((6, 5, 3))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(read_image(buf.getvalue()), rgb)
    np.testing.assert_array_equal(read_image(buf.getvalue(), name="upload.png"), rgb)
    _expect_error(b"hello", "not a recognised image format", "<bytes>")
    _expect_error(b"hello", "not a recognised image format", "upload.bin", name="upload.bin")
    _expect_error(b"", "empty file", "<bytes>")


def test_array_uint8_and_uint16_pass_through_without_copy() -> None:
    for arr in (_noise((4, 5)), _noise((4, 5, 3)), _noise((4, 5, 3), np.uint16, 65536)):
        out = read_image(arr)
        assert out is arr


def test_array_non_contiguous_is_made_contiguous() -> None:
    arr = _noise((8, 10, 3))[:, ::2]
    out = read_image(arr)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_array_channels() -> None:
    rgba = _noise((4, 5, 4))
    np.testing.assert_array_equal(read_image(rgba), rgba[..., :3])
    assert read_image(rgba).flags.c_contiguous
    one = _noise((4, 5, 1))
    np.testing.assert_array_equal(read_image(one), one[..., 0])


@pytest.mark.parametrize("arr", [np.array([[True, False]]), *OTHER_PIXEL_TYPES], ids=["bool", *OTHER_IDS])
def test_arrays_of_other_pixel_types_are_refused(arr: np.ndarray) -> None:
    """Were clipped to uint16 or scaled by a guess (float in [0, 1] x 65535, else as is; bool x 255)."""
    err = _expect_error(arr, f"unsupported pixel type {arr.dtype}", "frame-3", name="frame-3")
    assert "convert it to 8- or 16-bit" in str(err)


def test_array_big_endian_uint16_is_made_native() -> None:
    big_endian = np.array([[1, 40000]], dtype=">u2")
    out = read_image(big_endian)
    assert out.dtype == np.dtype(np.uint16) and out.dtype.isnative
    np.testing.assert_array_equal(out, [[1, 40000]])


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((0, 5), np.uint8),
        np.zeros((5, 0, 3), np.uint8),
        np.zeros(5, np.uint8),
        np.zeros((4, 5, 2), np.uint8),
        np.zeros((2, 4, 5, 3), np.uint8),
        np.zeros((3, 3), np.complex64),
    ],
)
def test_unusable_arrays(arr: np.ndarray) -> None:
    _expect_error(arr, "", "<array>")


# --- list_images ----------------------------------------------------------------------------------


def test_list_images(tmp_path: Path) -> None:
    folder = tmp_path / "plate"
    folder.mkdir()
    names = ["b.PNG", "a.jpg", "c.tiff", "d.Tif", "e.bmp", "f.jpeg", "notes.txt", "model.onnx", "._a.jpg"]
    for name in names:
        (folder / name).write_bytes(b"x")
    (folder / "sub.jpg").mkdir()
    explicit = tmp_path / "drop.dat"
    explicit.write_bytes(b"x")
    got = list_images([explicit, folder, str(explicit)])
    expected_folder = sorted(folder / n for n in ("a.jpg", "b.PNG", "c.tiff", "d.Tif", "e.bmp", "f.jpeg"))
    assert got == [explicit, *expected_folder, explicit]
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"} == IMAGE_SUFFIXES
    assert list_images([]) == []
    with pytest.raises(InvalidImage, match="file not found") as info:
        list_images([folder, tmp_path / "gone.jpg"])
    assert "gone.jpg" in str(info.value)


# --- real imager output ---------------------------------------------------------------------------


def test_real_images() -> None:
    if not REAL_DIR.is_dir():
        pytest.skip(f"real test images not found at {REAL_DIR} (they ship with the repository)")
    files = sorted(REAL_DIR.glob("*.jpg"))
    if not files:
        pytest.skip(f"no *.jpg in {REAL_DIR}")
    for path in files:
        out = read_image(path)
        assert out.dtype == np.uint8 and out.flags.c_contiguous, path.name
        if path.name in REAL_SHAPES:
            assert out.shape == REAL_SHAPES[path.name], path.name
        else:
            assert out.ndim == 2 or (out.ndim == 3 and out.shape[2] == 3), path.name


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ([1, 2, 3], "got list"),
        (None, "got NoneType"),
        (5, "got int"),
        ("drops/a\0b.png", "the file name contains a NUL byte"),
        (Path("drops/a\0b.png"), "NUL byte"),
    ],
    ids=["list", "None", "int", "nul-str", "nul-path"],
)
def test_non_image_sources_are_typed_errors(source: object, fragment: str) -> None:
    with pytest.raises(InvalidImage, match=fragment):
        read_image(source)  # type: ignore[arg-type]
    if isinstance(source, str | Path):
        with pytest.raises(InvalidImage, match="NUL byte"):
            list_images([source])
