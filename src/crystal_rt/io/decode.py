"""Decode an image file, encoded bytes or an array into a plain numpy image.

Every image that enters the runtime comes through :func:`read_image`, which returns a C-contiguous
array of dtype ``uint8`` or ``uint16`` (the bit depth is kept), shaped ``(H, W)`` for gray or
``(H, W, 3)`` in RGB order. The format is sniffed from the content, never from the suffix:

* TIFF (``II*\\0`` / ``MM\\0*``, also BigTIFF) goes through tifffile (16-bit RGB, float, planar;
  the first page of a multi-page file is used);
* PNG with 16 bits per sample and colour (colour types 2 and 6) goes through ``cv2.imdecode``,
  because Pillow silently reduces it to 8 bits (EXIF orientation is not applied on this path);
* everything else goes through Pillow (libjpeg-turbo for JPEG) with EXIF orientation applied.

Only the header is read before the size is checked, so a decompression bomb is refused before a
single pixel is decoded. ``max_pixels`` counts pixels of up to 4 bytes (8-bit gray, RGB, RGBA); a
pixel with more (16-bit colour, dozens of TIFF samples) counts as its bytes / 4 pixels, since it
costs that much memory: a 16-bit RGBA PNG of 50 M pixels counts 100 M. Alpha is dropped, never
composited. Palette images become RGB (even when the palette is gray, so that a palette always
gives three channels). Float images must be finite:
values in ``[0, 1]`` are scaled to the full ``uint16`` range, others are clipped to it.

Where Pillow's pixel buffer can be handed over without a copy the returned array is read-only;
copy it before writing to it in place. Every failure is an :class:`~crystal_rt.errors.InvalidImage`
carrying the file path (or the given name) in its message.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from crystal_rt.errors import InvalidImage

DEFAULT_MAX_PIXELS: int = 80_000_000
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UINT16_MAX = 65535
# Modes Pillow hands over as they are (dtype fixed up afterwards), and modes it converts itself.
_DIRECT_MODES = frozenset({"L", "RGB", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_CONVERT_MODES = {"1": "L", "LA": "L", "La": "L"}


def read_image(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` (a path, encoded bytes or an array) into a uint8/uint16 gray or RGB array."""
    if isinstance(source, np.ndarray):
        return _normalise(source, name or "<array>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), name or "<bytes>", max_pixels)
    path = _as_path(source, name)
    label = name or str(path)
    if path.is_dir():
        raise InvalidImage("is a directory, not an image file", path=label)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImage("file not found", path=label) from exc
    except PermissionError as exc:
        raise InvalidImage("permission denied", path=label) from exc
    except OSError as exc:
        raise InvalidImage(f"cannot read file: {exc.strerror or exc}", path=label) from exc
    return _decode(data, label, max_pixels)


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
    width: int, height: int, label: str, max_pixels: int, *, samples: int = 1, sample_bytes: int = 1
) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has zero size ({width}x{height})", path=label)
    pixel_bytes = max(1, samples) * max(1, sample_bytes)
    cost = width * height * max(1.0, pixel_bytes / 4)
    if cost <= max_pixels:
        return
    if pixel_bytes <= 4:
        raise InvalidImage(
            f"image too large: {width}x{height} = {width * height} pixels, more than the limit of "
            f"{max_pixels}; refused before decoding",
            path=label,
        )
    raise InvalidImage(
        f"image too large: {width}x{height} pixels of {samples} sample(s) x {sample_bytes} byte(s) count as "
        f"{int(cost)} pixels (a pixel of more than 4 bytes counts bytes / 4), more than the limit of "
        f"{max_pixels}; refused before decoding",
        path=label,
    )


def _decode(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    if not data:
        raise InvalidImage("empty file", path=label)
    if data[:4] in _TIFF_MAGICS:
        return _decode_tiff(data, label, max_pixels)
    png16_colour = data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x06")
    if data.startswith(_PNG_MAGIC) and data[12:16] == b"IHDR" and png16_colour:
        return _decode_png16_colour(data, label, max_pixels)
    return _decode_pillow(data, label, max_pixels)


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


def _decode_tiff(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(BytesIO(data)) as tif:
            page = tif.pages.first  # a multi-page file: the first page only
            height, width = int(page.imagelength), int(page.imagewidth)
            samples = int(page.samplesperpixel)
            sample_bytes = (int(page.bitspersample) + 7) // 8
            _check_size(width, height, label, max_pixels, samples=samples, sample_bytes=sample_bytes)
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            arr = page.asarray()
    except (InvalidImage, MemoryError):
        raise
    except Exception as exc:
        raise InvalidImage(f"truncated or corrupt TIFF: {exc}", path=label) from exc
    if arr.size != height * width * samples:  # e.g. a volumetric page
        raise InvalidImage(f"unsupported TIFF layout (shape {tuple(arr.shape)})", path=label)
    # Singleton dimensions squeezed, planar (S, H, W) made (H, W, S); (H, W, 1) becomes gray later.
    if planar:
        arr = np.moveaxis(arr.reshape(samples, height, width), 0, -1)
    else:
        arr = arr.reshape(height, width, samples)
    return _normalise(arr, label)


def _decode_pillow(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(BytesIO(data))
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = match.group(1) if match else "too many"
        raise InvalidImage(
            f"image too large: {pixels} pixels, more than the limit of {max_pixels}; refused before decoding",
            path=label,
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a recognised image format", path=label) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImage(f"corrupt image header: {exc}", path=label) from exc
    with im:
        _check_size(im.width, im.height, label, max_pixels, **_pillow_pixel(im.mode))
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
            elif mode not in _DIRECT_MODES:
                arr = np.asarray(im.convert("RGB"))  # RGBA, P, PA, CMYK, YCbCr, ...: alpha dropped
            else:
                arr = np.asarray(im)
        except ValueError as exc:
            raise InvalidImage(f"unsupported {kind} image mode {mode}: {exc}", path=label) from exc
    return _normalise(arr, label)


def _pillow_pixel(mode: str) -> dict[str, int]:
    """Samples per pixel and bytes per sample of a Pillow mode (for the size check)."""
    try:
        bands = int(Image.getmodebands(mode))
    except (KeyError, ValueError):
        bands = 1
    sample_bytes = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    return {"samples": bands, "sample_bytes": sample_bytes}


def _normalise(arr: np.ndarray, label: str) -> np.ndarray:
    """Check shape, drop alpha, bring the dtype to uint8/uint16 and make the array C-contiguous."""
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
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "b":
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif kind == "u" and size in (1, 2):
        arr = arr.astype(np.uint8 if size == 1 else np.uint16, copy=False)  # native byte order
    elif kind == "f":
        values = arr.astype(np.float32, copy=False) if size < 4 else arr
        if not np.isfinite(values).all():
            raise InvalidImage("float image contains NaN or infinity", path=label)
        scaled = values * (_UINT16_MAX if values.max() <= 1.0 else 1)  # a fresh array, changed in place
        np.clip(scaled, 0, _UINT16_MAX, out=scaled)
        arr = np.rint(scaled, out=scaled).astype(np.uint16)
    elif kind in "iu":
        arr = np.clip(arr, 0, _UINT16_MAX).astype(np.uint16)
    else:
        raise InvalidImage(f"unsupported pixel type {arr.dtype}", path=label)
    return np.ascontiguousarray(arr)
