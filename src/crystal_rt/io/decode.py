"""Decode an image file, encoded bytes or an array into a plain numpy image.

Every image that enters the runtime comes through :func:`read_image`, which returns a C-contiguous
array of dtype ``uint8`` or ``uint16`` (the bit depth is kept), shaped ``(H, W)`` for gray or
``(H, W, 3)`` in RGB order; :func:`read_image_info` returns the same pixels with the significant
bits of a 16-bit image where the file gives them (:class:`DecodedImage`; the runtime expands them
to the full 16-bit range, ``crystal_rt.runtime.bit_depth``). The format is sniffed from the
content, never from the suffix:

* TIFF (``II*\\0`` / ``MM\\0*``, also BigTIFF) goes through tifffile and imagecodecs (any
  compression they decode: LZW, Deflate, JPEG, PackBits, ...; 16-bit RGB, planar; the first page
  of a multi-page file), its photometric interpretation honoured: MinIsWhite inverted, palettes
  applied, CMYK and YCbCr converted to RGB (``crystal_rt.io.tiff``);
* PNG with 16 bits per sample and colour (colour types 2 and 6) goes through ``cv2.imdecode``,
  because Pillow silently reduces it to 8 bits (EXIF orientation is not applied on this path);
* JPEG, other PNG and BMP go through Pillow (libjpeg-turbo for JPEG) with EXIF orientation applied.
  Pillow opens these formats only (:data:`PILLOW_FORMATS`): never EPS or PostScript (which it would
  hand to Ghostscript), PDF, PSD, GIF, ...; those are refused by name.

Only the header is read before the size is checked, so a decompression bomb is refused before a
single pixel is decoded; for TIFF every allocation the header declares counts (the page with its
ImageDepth, one tile or strip, each JPEG segment's frame; ``crystal_rt.io.tiff``). A path must
name a regular file (a named pipe, a device such as ``/dev/zero``, a socket or a folder is refused
unread) of at most ``max_bytes`` (512 MiB by default; no more than that plus one byte is read).
``max_pixels`` counts pixels of up to 4 bytes (8-bit gray, RGB, RGBA); a
pixel with more (16-bit colour, dozens of TIFF samples) counts as its bytes / 4 pixels, since it
costs that much memory: a 16-bit RGBA PNG of 50 M pixels counts 100 M. Alpha is dropped, never
composited. Palette images become RGB (even when the palette is gray, so that a palette always
gives three channels). Pixels that are not 8- or 16-bit unsigned integers (signed or wider
integers, float, bool, complex; from a TIFF or an array) are refused, naming the type: their
range cannot be known, and a guess gave images the model sees as black.

Where Pillow's pixel buffer can be handed over without a copy the returned array is read-only;
copy it before writing to it in place. Every failure is an :class:`~crystal_rt.errors.InvalidImage`
carrying the file path (or the given name) in its message.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageTooLarge, InvalidImage
from .tiff import decode_tiff, is_8_or_16_bit, unsupported_pixel_type

DEFAULT_MAX_PIXELS: int = 80_000_000
#: the largest image file read from a path (as ``watch --max-file-mb``'s default)
DEFAULT_MAX_BYTES: int = 512 * 2**20
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UINT16_MAX = 65535
# Modes Pillow hands over as they are (dtype fixed up afterwards), and modes it converts itself.
_DIRECT_MODES = frozenset({"L", "RGB", "I;16", "I;16L", "I;16B", "I;16N"})
_CONVERT_MODES = {"1": "L", "LA": "L", "La": "L"}
#: the formats Pillow may open (TIFF goes to tifffile): never EPS (Ghostscript), PDF, PSD, ...
PILLOW_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP")
SUPPORTED = "crystal-rt reads JPEG, PNG, TIFF and BMP"
# formats people may try, named in the refusal (magic bytes at offset 0)
_KNOWN_UNSUPPORTED = (
    (b"%!PS", "PostScript / EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x93NUMPY", "a NumPy .npy array (pass the array itself)"),
    (b"SIMPLE  =", "FITS"),
)


@dataclass(frozen=True)
class DecodedImage:
    """What :func:`read_image_info` returns: the pixels (as :func:`read_image` returns them) and,
    for 16-bit images, the significant bits the file gives (TIFF MaxSampleValue 281 /
    SMaxSampleValue 341 below 65535 or BitsPerSample 9..15; PNG sBIT for LSB-aligned data, 16 where
    sBIT's samples are scaled to the full range), else None (8-bit images, arrays, files that say
    nothing)."""

    pixels: np.ndarray
    bit_depth: int | None = None


def read_image(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode ``source`` (a path, encoded bytes or an array) into a uint8/uint16 gray or RGB array."""
    return read_image_info(source, max_pixels=max_pixels, name=name, max_bytes=max_bytes).pixels


def read_image_info(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """:func:`read_image`'s pixels with the bit depth the file gives (:class:`DecodedImage`); a path
    must name a regular file of at most ``max_bytes`` (:func:`read_file_bytes`)."""
    if isinstance(source, np.ndarray):
        return DecodedImage(_normalise(source, name or "<array>"))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), name or "<bytes>", max_pixels)
    path = _as_path(source, name)
    label = name or str(path)
    return _decode(read_file_bytes(path, label, max_bytes), label, max_pixels)


def _not_regular(mode: int) -> str | None:
    """What a file that is not a regular file is (None for a regular file)."""
    kinds = (
        (stat.S_ISDIR, "is a directory, not an image file"),
        (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file; refused unread"),
        (stat.S_ISCHR, "is a character device, not a regular file; refused unread"),
        (stat.S_ISBLK, "is a block device, not a regular file; refused unread"),
        (stat.S_ISSOCK, "is a socket, not a regular file; refused unread"),
    )
    for test, what in kinds:
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "is not a regular file; refused unread"


def read_file_bytes(path: Path, label: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A regular file's bytes, at most ``max_bytes``: anything else (a folder, a named pipe, a device
    such as /dev/zero, a socket) is refused before it is read (stat), a file swapped for one
    between the stat and the open is refused after it (opened without blocking, then fstat), and a
    file larger than ``max_bytes`` is refused having read at most ``max_bytes + 1`` bytes."""
    try:
        what = _not_regular(os.stat(path).st_mode)
        if what is not None:
            raise InvalidImage(what, path=label)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            what = _not_regular(info.st_mode)
            if what is not None:
                raise InvalidImage(what, path=label)
            if info.st_size > max_bytes:
                raise _file_too_large(str(info.st_size), max_bytes, label)
            data = fh.read(info.st_size + 1)
            if len(data) > info.st_size:  # grown since the fstat
                data += fh.read(max_bytes + 1 - len(data))
    except FileNotFoundError as exc:
        raise InvalidImage("file not found", path=label) from exc
    except PermissionError as exc:
        raise InvalidImage("permission denied", path=label) from exc
    except OSError as exc:
        raise InvalidImage(f"cannot read file: {exc.strerror or exc}", path=label) from exc
    if len(data) > max_bytes:
        raise _file_too_large(f"at least {len(data)}", max_bytes, label)
    return data


def _file_too_large(size: str, max_bytes: int, label: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"file too large: {size} bytes, more than the limit of {max_bytes}; not read", path=label
    )


def _as_path(source: object, name: str | None) -> Path:
    """``source`` as a Path, or InvalidImage for anything that is not a usable path."""
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidImage(
            f"not an image: expected a path, encoded bytes or a numpy array, got {type(source).__name__}",
            path=name or "<input>",
        )
    text = os.fspath(source)
    if (b"\0" if isinstance(text, bytes) else "\0") in text:  # type: ignore[operator]
        raise InvalidImage("the file name contains a NUL byte", path=name or repr(text))
    return Path(os.fsdecode(text))


def list_images(paths: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """Expand folders (sorted, image suffixes only, no dotfiles or dot-folders; sub-folders too with
    ``recursive``); keep files as given."""
    found: list[Path] = []
    for item in paths:
        path = _as_path(item, None)
        if path.is_dir():
            found.extend(_folder_images(path, recursive))
        elif path.exists():
            found.append(path)
        else:
            raise InvalidImage("file not found", path=path)
    return found


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise InvalidImage(f"cannot list folder: {exc.strerror or exc}", path=folder) from exc
    found: list[Path] = []
    for child in children:
        if child.name.startswith("."):  # e.g. macOS "._x.jpg" resource forks
            continue
        if child.is_dir():
            if recursive and not child.is_symlink():
                found.extend(_folder_images(child, recursive))
        elif child.suffix.lower() in IMAGE_SUFFIXES and child.is_file():
            found.append(child)
    return found


def images_below(folder: Path, limit: int = 3) -> tuple[int, list[Path]]:
    """How many images sit in ``folder``'s sub-folders (not in the folder itself), and a few of them:
    for the message that suggests ``--recursive``."""
    below = [p for p in _folder_images(folder, True) if p.parent != folder]
    return len(below), below[:limit]


def _check_size(
    width: int,
    height: int,
    label: str,
    max_pixels: int,
    *,
    depth: int = 1,
    samples: int = 1,
    sample_bytes: int = 1,
    what: str = "image",
) -> None:
    """Refuse a declared allocation (the image, or a TIFF tile, strip or JPEG segment: ``what``) of
    width x height x depth pixels over ``max_pixels``, before anything is decoded."""
    if what == "image" and (width <= 0 or height <= 0):
        raise InvalidImage(f"image has zero size ({width}x{height})", path=label)
    pixel_bytes = max(1, samples) * max(1, sample_bytes)
    pixels = max(0, width) * max(0, height) * max(1, depth)
    cost = pixels * max(1.0, pixel_bytes / 4)
    if cost <= max_pixels:
        return
    size = f"{width}x{height}" if depth <= 1 else f"{width}x{height}x{depth} (ImageDepth {depth})"
    subject = size if what == "image" else f"its {what} of {size}"
    if pixel_bytes <= 4:
        raise ImageTooLarge(
            f"image too large: {subject} = {pixels} pixels, more than the limit of "
            f"{max_pixels}; refused before decoding",
            path=label,
        )
    raise ImageTooLarge(
        f"image too large: {subject} pixels of {samples} sample(s) x {sample_bytes} byte(s) count as "
        f"{int(cost)} pixels (a pixel of more than 4 bytes counts bytes / 4), more than the limit of "
        f"{max_pixels}; refused before decoding",
        path=label,
    )


def _decode(data: bytes, label: str, max_pixels: int) -> DecodedImage:
    if not data:
        raise InvalidImage("empty file", path=label)
    if data[:4] in _TIFF_MAGICS:

        def check_size(width: int, height: int, **kwargs: Any) -> None:
            _check_size(width, height, label, max_pixels, **kwargs)

        pixels, bits = decode_tiff(data, label, check_size)
        return DecodedImage(_normalise(pixels, label), bits)
    is_png = data.startswith(_PNG_MAGIC) and data[12:16] == b"IHDR"
    png16_colour = data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x06")
    if is_png and png16_colour:
        pixels = _decode_png16_colour(data, label, max_pixels)
    else:
        pixels = _decode_pillow(data, label, max_pixels)
    if is_png and pixels.dtype == np.uint16:
        return DecodedImage(pixels, _png_bit_depth(data, pixels))
    return DecodedImage(pixels)


def _png_bit_depth(data: bytes, pixels: np.ndarray) -> int | None:
    """A 16-bit PNG's significant bits from its sBIT chunk. PNG says samples are scaled to the full
    range, so sBIT b with values above 2^b - 1 is MSB-scaled data (16: full range, nothing to
    expand); values all within 2^b - 1 are LSB-aligned data of b bits. None without sBIT."""
    bits = _png_sbit(data)
    if bits is None or bits >= 16:
        return bits
    return 16 if int(pixels.max()) > (1 << bits) - 1 else bits


def _png_sbit(data: bytes) -> int | None:
    """The largest colour (not alpha) value of the sBIT chunk before the first IDAT, or None."""
    colour_values = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(data[25], 0)
    offset = 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT":
            values = data[offset + 8 : offset + 8 + min(length, colour_values)]
            bits = max(values, default=0)
            return bits if 1 <= bits <= 16 else None
        offset += 12 + length
    return None


def _decode_png16_colour(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    samples = 4 if data[25:26] == b"\x06" else 3
    _check_size(width, height, label, max_pixels, samples=samples, sample_bytes=2)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InvalidImage("truncated or corrupt PNG", path=label) from exc
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidImage("truncated or corrupt PNG", path=label)
    code = cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return _normalise(cv2.cvtColor(arr, code), label)


def _unsupported_format(data: bytes) -> str:
    """The refusal of a file no decoder here reads: named where its magic bytes are known."""
    kind = next((what for magic, what in _KNOWN_UNSUPPORTED if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if kind is None and data[4:8] == b"ftyp":
        kind = "HEIF / AVIF"
    if kind is None:
        return "not a recognised image format"
    return f"not a supported image format: {kind} ({SUPPORTED})"


def _open_pillow(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Pillow's image object for JPEG, PNG or BMP bytes (header only); never another format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(BytesIO(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = match.group(1) if match else "too many"
        raise ImageTooLarge(
            f"image too large: {pixels} pixels, more than the limit of {max_pixels}; refused before decoding",
            path=label,
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(_unsupported_format(data), path=label) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImage(f"corrupt image header: {exc}", path=label) from exc


def _decode_pillow(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    im = _open_pillow(data, label, max_pixels)
    with im:
        samples, sample_bytes = _pillow_pixel(im.mode)
        _check_size(im.width, im.height, label, max_pixels, samples=samples, sample_bytes=sample_bytes)
        kind = im.format or "image"
        try:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
        except MemoryError:
            raise
        except Exception as exc:
            raise InvalidImage(f"truncated or corrupt {kind}: {exc}", path=label) from exc
        mode = im.mode
        try:
            if mode in _CONVERT_MODES:
                arr = np.asarray(im.convert(_CONVERT_MODES[mode]))
            elif mode == "I":  # 32-bit integers: what an older Pillow makes of 16-bit gray PNG
                arr = _int32_as_uint16(np.asarray(im), label)
            elif mode not in _DIRECT_MODES:
                arr = np.asarray(im.convert("RGB"))  # RGBA, P, PA, CMYK, YCbCr, ...: alpha dropped
            else:
                arr = np.asarray(im)
        except ValueError as exc:
            raise InvalidImage(f"unsupported {kind} image mode {mode}: {exc}", path=label) from exc
    return _normalise(arr, label)


def _int32_as_uint16(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _UINT16_MAX):
        raise unsupported_pixel_type(arr.dtype, label)
    return arr.astype(np.uint16)


def _pillow_pixel(mode: str) -> tuple[int, int]:
    """Samples per pixel and bytes per sample of a Pillow mode (for the size check)."""
    try:
        bands = int(Image.getmodebands(mode))
    except (KeyError, ValueError):
        bands = 1
    sample_bytes = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    return bands, sample_bytes


def _normalise(arr: np.ndarray, label: str) -> np.ndarray:
    """Check shape and pixel type (uint8/uint16 only), drop alpha, make the array native-order and
    C-contiguous."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise InvalidImage(
            f"unsupported image shape {tuple(arr.shape)}; expected (H, W) gray or (H, W, 3) RGB", path=label
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImage(f"image has zero size (shape {tuple(arr.shape)})", path=label)
    if not is_8_or_16_bit(arr.dtype):  # int, float, bool, complex: no guessing their range
        raise unsupported_pixel_type(arr.dtype, label)
    arr = arr.astype(np.uint8 if arr.dtype.itemsize == 1 else np.uint16, copy=False)  # native order
    return np.ascontiguousarray(arr)
