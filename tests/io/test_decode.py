"""Tests for crystal_rt.io.decode: every image is generated here (Pillow, cv2, tifffile)."""

from __future__ import annotations

import io
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from crystal_rt.errors import InvalidImage
from crystal_rt.io.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_DIR = REPO_ROOT.parent / "shared" / "data" / "real"
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
    out = read_image(_save(tmp_path / "rot.jpg", im, "JPEG", exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)


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


def test_float_tiff_in_unit_range_scales_to_uint16(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 1e-6]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values)
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(values.astype(np.float64) * 65535).astype(np.uint16))


def test_float_tiff_above_one_is_clipped(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.array([[-3.0, 2.4, 70000.0]], np.float64))
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), [[0, 2, 65535]])


def test_float_tiff_with_nan_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[0.1, np.nan]], np.float32))
    _expect_error(tmp_path / "nan.tif", "float image contains NaN or infinity", "nan.tif")


def test_int32_tiff_is_clipped(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "i.tif", np.array([[-5, 300, 100000]], np.int32))
    out = read_image(tmp_path / "i.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 300, 65535]])


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


def test_array_bool_gives_0_and_255() -> None:
    out = read_image(np.array([[True, False]]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[255, 0]])


def test_array_float() -> None:
    np.testing.assert_array_equal(read_image(np.array([[0.0, 1.0]], np.float16)), [[0, 65535]])
    np.testing.assert_array_equal(read_image(np.array([[0.0, 300.4]])), [[0, 300]])
    _expect_error(np.array([[np.inf, 0.0]]), "NaN or infinity", "<array>")
    _expect_error(np.array([[np.nan]]), "NaN or infinity", "frame-7", name="frame-7")


def test_array_channels() -> None:
    rgba = _noise((4, 5, 4))
    np.testing.assert_array_equal(read_image(rgba), rgba[..., :3])
    assert read_image(rgba).flags.c_contiguous
    one = _noise((4, 5, 1))
    np.testing.assert_array_equal(read_image(one), one[..., 0])


def test_array_other_dtypes_are_clipped_to_uint16() -> None:
    out = read_image(np.array([[-1, 5, 70000]], np.int64))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 5, 65535]])
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
        pytest.skip(f"real test images not found at {REAL_DIR} (the repository's sibling ../shared)")
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
