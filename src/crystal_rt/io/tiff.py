"""TIFF decoding through tifffile (with imagecodecs for LZW, JPEG, PackBits, ...), the photometric
interpretation honoured (design note 28).

tifffile returns the stored samples; what they mean is the photometric interpretation's:

* MinIsBlack: gray as stored (extra samples, e.g. alpha, dropped); MinIsWhite: inverted,
  ``2^bits - 1 - v`` (bits: the significant bits, see below);
* RGB: as stored (alpha dropped);
* Palette: the colour map applied (TIFF maps are 16-bit: 8-bit output where every entry is an
  8-bit value times 257 or 256, or below 256 as some writers store them, as libtiff guesses);
* Separated with InkSet 1 (CMYK): ``R = (M - C) * (M - K) / M`` etc., M = 255 or 65535;
* YCbCr: JPEG-compressed pages come back from tifffile as RGB already; uncompressed 8-bit pages
  without subsampling are converted with the file's YCbCrCoefficients and ReferenceBlackWhite;
* anything else (CIELAB, CFA raw sensor data, LogLuv, other ink sets, subsampled uncompressed
  YCbCr) is refused by name.

Samples of 1..7 bits (bilevel, 4-bit gray) are scaled to 8 bits (``v * 255 / (2^b - 1)``). A
16-bit page's significant bits come from BitsPerSample 9..15 (packed), or MaxSampleValue (281) /
SMaxSampleValue (341) below 65535; they go back with the pixels (the runtime expands them,
``crystal_rt.runtime.bit_depth``). Pixel types other than 8/16-bit unsigned are refused.

Before any pixel is decoded, every allocation the header declares is checked against the size
limit (:func:`check_declared_sizes`): the page (width x height x ImageDepth x samples x bytes), one
tile or strip, and for JPEG each segment's frame header (libjpeg allocates what the segment says,
whatever the tile size). Volumes (ImageDepth > 1) and compressions whose decoders size their output
from their own data (PNG, WebP, JPEG 2000, JPEG XL, LERC, ...: not :data:`BOUNDED_COMPRESSIONS`)
are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import numpy as np
import tifffile

from ..errors import InvalidImage

# TIFF tag codes
MAX_SAMPLE_VALUE, S_MAX_SAMPLE_VALUE = 281, 341
INK_SET, YCBCR_COEFFICIENTS, REFERENCE_BLACK_WHITE = 332, 529, 532
_JPEG_COMPRESSIONS = (6, 7)  # old-style and new-style JPEG: tifffile decodes them to RGB
_CHECK_SIZE = Callable[..., None]
#: compressions whose decoders write into a buffer of the tile or strip size the tags declare (JPEG:
#: checked against each segment's frame header); others size their output from their own data
BOUNDED_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34925, 50000, 50013})


def decode_tiff(data: bytes, label: str, check_size: _CHECK_SIZE) -> tuple[np.ndarray, int | None]:
    """The first page as (H, W) or (H, W, 3) uint8/uint16 as its photometric interpretation says,
    and its significant bits (16-bit pages that say so; else None). ``check_size(width, height,
    depth=, samples=, sample_bytes=, what=)`` runs on every allocation the header declares (the
    page, each tile or strip, each JPEG segment's frame) before any pixel is decoded."""
    try:
        with tifffile.TiffFile(BytesIO(data)) as tif:
            page = tif.pages.first  # a multi-page file: the first page only
            check_declared_sizes(page, data, label, check_size)
            _check_photometric(page, label)
            _check_layout(page, label)
            arr = page.asarray()
            return _interpret(page, _as_hws(page, arr, label), label)
    except (InvalidImage, MemoryError):
        raise
    except Exception as exc:
        raise InvalidImage(f"truncated or corrupt TIFF: {_reason(exc)}", path=label) from exc


def check_declared_sizes(page: Any, data: bytes, label: str, check_size: _CHECK_SIZE) -> None:
    """Refuse, before decoding, a page whose declared allocations exceed the limit (``check_size``)
    or cannot be known: the page (width x height x ImageDepth x samples x bytes), one tile or strip
    (what each decoder allocates), and for JPEG the frame each segment declares (libjpeg allocates
    what the segment's SOF says, whatever the tile size); a compression whose decoder sizes its
    output from its own embedded header (JPEG 2000, WebP, PNG, LERC, ...) is refused by name."""
    height, width, depth = int(page.imagelength), int(page.imagewidth), int(page.imagedepth)
    samples = int(page.samplesperpixel)
    sample_bytes = max(1, (int(page.bitspersample) + 7) // 8)
    check_size(width, height, depth=depth, samples=samples, sample_bytes=sample_bytes, what="image")
    contig_samples = samples if page.planarconfig != tifffile.PLANARCONFIG.SEPARATE else 1
    if page.is_tiled:
        chunk = (int(page.tilewidth), int(page.tilelength), max(1, int(page.tiledepth)), "tile")
    else:
        rows = min(max(1, int(page.rowsperstrip)), max(1, height))
        chunk = (width, rows, 1, "strip")
    check_size(
        chunk[0], chunk[1], depth=chunk[2], samples=contig_samples, sample_bytes=sample_bytes, what=chunk[3]
    )
    if int(page.compression) in _JPEG_COMPRESSIONS:
        _check_jpeg_segments(page, data, chunk, check_size, label)


def _check_layout(page: Any, label: str) -> None:
    """Refuse, before decoding, a volume (ImageDepth > 1) and a compression whose decoder sizes its
    output from its own data (not in :data:`BOUNDED_COMPRESSIONS`)."""
    depth = int(page.imagedepth)
    if depth > 1:
        raise InvalidImage(
            f"unsupported TIFF layout: ImageDepth {depth} (a volume of {depth} planes); "
            "one plane per page is read",
            path=label,
        )
    compression = int(page.compression)
    if compression not in BOUNDED_COMPRESSIONS:
        raise InvalidImage(
            f"unsupported TIFF compression {_compression_name(compression)}: its decoder takes the "
            "image size from its own data, which cannot be checked before decoding; convert it to an "
            "uncompressed, LZW, Deflate, Zstd or JPEG TIFF",
            path=label,
        )


def _compression_name(code: int) -> str:
    try:
        return f"{tifffile.COMPRESSION(code).name} ({code})"
    except ValueError:
        return str(code)


def _check_jpeg_segments(
    page: Any,
    data: bytes,
    chunk: tuple[int, int, int, str],
    check_size: _CHECK_SIZE,
    label: str,
) -> None:
    """Each JPEG segment's frame (SOF) within the limit and within its tile or strip."""
    width, height, _, what = chunk
    fallback = _jpeg_frame(bytes(page.jpegheader or b"")) or _jpeg_frame(bytes(page.jpegtables or b""))
    for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=False)):
        frame = _jpeg_frame(data[int(offset) : int(offset) + int(count)]) or fallback
        if frame is None:
            continue  # no frame header: libjpeg refuses it without allocating
        frame_width, frame_height, components, precision = frame
        check_size(
            frame_width,
            frame_height,
            samples=components,
            sample_bytes=2 if precision > 8 else 1,
            what=f"JPEG {what} {index}",
        )
        if frame_width > width or frame_height > height:
            raise InvalidImage(
                f"corrupt TIFF: JPEG {what} {index} declares {frame_width}x{frame_height} pixels, more "
                f"than its {width}x{height} {what}; refused before decoding",
                path=label,
            )


def _jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, precision) of a JPEG stream's first frame header (SOFn), read
    from its markers without decoding; None where there is none before the scan."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            header = data[i + 4 : i + 10]  # precision, height, width, components (SOF; JPEG-LS SOF55)
            if len(header) < 6:
                return None
            height = int.from_bytes(header[1:3], "big")
            width = int.from_bytes(header[3:5], "big")
            return width, height, header[5], header[0]
        i += 2 + length
    return None


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "imagecodecs" in text:  # a base dependency; only a broken install lacks it
        return f"{text} (pip install imagecodecs)"
    return text


def _as_hws(page: Any, arr: np.ndarray, label: str) -> np.ndarray:
    """(H, W, S): singleton dimensions squeezed, planar (S, H, W) moved to the end."""
    height, width, samples = int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel)
    if arr.size != height * width * samples:  # e.g. a volumetric page
        raise InvalidImage(f"unsupported TIFF layout (shape {tuple(arr.shape)})", path=label)
    if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
        return np.moveaxis(arr.reshape(samples, height, width), 0, -1)
    return arr.reshape(height, width, samples)


def _photometric_name(page: Any) -> str:
    value = page.photometric
    return getattr(value, "name", str(value))


def _check_photometric(page: Any, label: str) -> None:
    """Refuse, before decoding, what is not gray, RGB, a palette, CMYK or YCbCr."""
    P = tifffile.PHOTOMETRIC
    photometric = page.photometric
    if photometric in (P.MINISBLACK, P.MINISWHITE, P.RGB, P.PALETTE, None):
        return
    if photometric == P.SEPARATED:
        ink_set = _tag(page, INK_SET, 1)
        if ink_set != 1 or _colour_samples(page) != 4:
            raise InvalidImage(
                f"unsupported TIFF: separated colour with ink set {ink_set} and {_colour_samples(page)} "
                "inks (only CMYK, ink set 1, is read); convert it to RGB",
                path=label,
            )
        return
    if photometric == P.YCBCR:
        if int(page.compression) in _JPEG_COMPRESSIONS:
            return
        if int(page.bitspersample) != 8 or tuple(page.subsampling or (1, 1)) != (1, 1):
            raise InvalidImage(
                f"unsupported TIFF: uncompressed YCbCr of {page.bitspersample} bits with subsampling "
                f"{tuple(page.subsampling or (1, 1))} (8-bit without subsampling is read); convert it to RGB",
                path=label,
            )
        return
    raise InvalidImage(
        f"unsupported TIFF photometric interpretation {_photometric_name(page)} "
        "(gray, RGB, palette, CMYK and YCbCr are read); convert it to RGB or gray",
        path=label,
    )


def _tag(page: Any, code: int, default: Any = None) -> Any:
    tag = page.tags.get(code)
    return default if tag is None else tag.value


def _colour_samples(page: Any) -> int:
    return int(page.samplesperpixel) - len(page.extrasamples or ())


def unsupported_pixel_type(dtype: np.dtype[Any], label: str) -> InvalidImage:
    """The error for pixels that are not 8- or 16-bit unsigned integers (TIFF and arrays alike)."""
    return InvalidImage(
        f"unsupported pixel type {dtype}: only 8- and 16-bit unsigned images are read; "
        "convert it to 8- or 16-bit",
        path=label,
    )


def is_8_or_16_bit(dtype: np.dtype[Any]) -> bool:
    """uint8 or uint16, in either byte order."""
    return dtype.kind == "u" and dtype.itemsize in (1, 2)


def _check_dtype(arr: np.ndarray, label: str) -> None:
    if not (is_8_or_16_bit(arr.dtype) or arr.dtype == np.bool_):  # bool: bilevel pages
        raise unsupported_pixel_type(arr.dtype, label)


def _interpret(page: Any, arr: np.ndarray, label: str) -> tuple[np.ndarray, int | None]:
    """The photometric interpretation applied to (H, W, S) samples."""
    _check_dtype(arr, label)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)  # bilevel: 0/1, scaled to 0/255 below
    P = tifffile.PHOTOMETRIC
    photometric = page.photometric
    if photometric == P.PALETTE:
        return _apply_colormap(page, arr[..., 0], label), None
    bits = _significant_bits(page, arr)
    if photometric in (P.MINISBLACK, P.MINISWHITE) and arr.shape[2] > 1 and _colour_samples(page) == 1:
        arr = arr[..., :1]  # gray + alpha (extra samples): the gray
    if photometric == P.MINISWHITE:
        arr = _invert(arr, bits or int(page.bitspersample))
    elif photometric == P.SEPARATED:
        arr = cmyk_to_rgb(arr[..., :4])
    elif photometric == P.YCBCR and int(page.compression) not in _JPEG_COMPRESSIONS:
        arr = ycbcr_to_rgb(arr[..., :3], page)
    if int(page.bitspersample) < 8:
        arr = scale_to_8_bits(arr, int(page.bitspersample))
    return arr, bits if arr.dtype.itemsize == 2 else None


def _significant_bits(page: Any, arr: np.ndarray) -> int | None:
    """A 16-bit page's significant bits: BitsPerSample 9..15, or the bits of MaxSampleValue /
    SMaxSampleValue below 65535 (the largest over the samples); None where the file says nothing."""
    if arr.dtype.itemsize != 2:
        return None
    stored = int(page.bitspersample)
    if 9 <= stored <= 15:
        return stored
    for code in (MAX_SAMPLE_VALUE, S_MAX_SAMPLE_VALUE):
        value = _tag(page, code)
        values = value if isinstance(value, tuple | list) else (value,)
        try:
            largest = max(int(v) for v in values)
        except (TypeError, ValueError):
            continue
        if 0 < largest < 65535:
            return largest.bit_length()
    return None


def _invert(arr: np.ndarray, bits: int) -> np.ndarray:
    """MinIsWhite: ``2^bits - 1 - v`` (values above 2^bits - 1 become 0)."""
    top = (1 << bits) - 1
    inverted: np.ndarray = (top - np.minimum(arr, top)).astype(arr.dtype)
    return inverted


def scale_to_8_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` < 8 bits (in uint8) to 0..255: ``round(v * 255 / (2^bits - 1))``."""
    top = (1 << bits) - 1
    table = np.full(256, 255, dtype=np.uint8)
    table[: top + 1] = (np.arange(top + 1, dtype=np.int64) * 510 + top) // (2 * top)
    scaled: np.ndarray = table[arr]
    return scaled


def _apply_colormap(page: Any, index: np.ndarray, label: str) -> np.ndarray:
    """(H, W, 3) of palette indices through the page's colour map (16-bit; 8-bit where it fits)."""
    colormap = page.colormap
    if colormap is None or colormap.ndim != 2 or colormap.shape[0] != 3:
        raise InvalidImage("palette TIFF without a usable colour map", path=label)
    table = _palette_table(np.asarray(colormap))
    largest = int(index.max())
    if largest >= table.shape[0]:
        raise InvalidImage(
            f"palette index {largest} outside the colour map of {table.shape[0]} entries", path=label
        )
    rgb: np.ndarray = table[index]
    return rgb


def _palette_table(colormap: np.ndarray) -> np.ndarray:
    """(entries, 3): 8-bit where every entry is an 8-bit value x 257 or x 256, or below 256 (a
    writer that stored 8-bit values, as libtiff's heuristic assumes); 16-bit otherwise."""
    entries = colormap.astype(np.uint16).T
    if int(entries.max(initial=0)) < 256:
        return np.ascontiguousarray(entries.astype(np.uint8))
    for factor in (257, 256):
        if not np.any(entries % factor):
            return np.ascontiguousarray((entries // factor).astype(np.uint8))
    return np.ascontiguousarray(entries)


def _rationals(page: Any, code: int, default: tuple[float, ...]) -> list[float]:
    """A RATIONAL tag's values (tifffile gives numerator, denominator pairs), or ``default``."""
    value = _tag(page, code)
    if value is None:
        return [float(v) for v in default]
    flat = [float(v) for v in np.ravel(value)]
    if len(flat) == 2 * len(default):
        return [num / den if den else 0.0 for num, den in zip(flat[0::2], flat[1::2], strict=True)]
    return flat if len(flat) == len(default) else [float(v) for v in default]


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """(H, W, 4) CMYK (InkSet 1) to RGB: ``R = round((M - C) * (M - K) / M)``, M the type's maximum."""
    top = 255 if cmyk.dtype.itemsize == 1 else 65535
    wide = cmyk.astype(np.int64)
    white = top - wide[..., 3:4]
    rgb = ((top - wide[..., :3]) * white + top // 2) // top
    return rgb.astype(cmyk.dtype)


def ycbcr_to_rgb(ycc: np.ndarray, page: Any) -> np.ndarray:
    """8-bit YCbCr (no subsampling) to RGB, TIFF 6.0 section 21: the ReferenceBlackWhite coding
    ranges, then ``R = Cr (2 - 2 LumaRed) + Y``, ``B = Cb (2 - 2 LumaBlue) + Y``,
    ``G = (Y - LumaBlue B - LumaRed R) / LumaGreen``."""
    luma_red, luma_green, luma_blue = _rationals(page, YCBCR_COEFFICIENTS, (0.299, 0.587, 0.114))
    reference = _rationals(page, REFERENCE_BLACK_WHITE, (0, 255, 128, 255, 128, 255))
    values = ycc.astype(np.float64)
    black, white = np.array(reference[0::2]), np.array(reference[1::2])
    span = np.where(white == black, 1.0, white - black)
    y = (values[..., 0] - black[0]) * 255.0 / span[0]
    cb = (values[..., 1] - black[1]) * 127.0 / span[1]
    cr = (values[..., 2] - black[2]) * 127.0 / span[2]
    red = cr * (2 - 2 * luma_red) + y
    blue = cb * (2 - 2 * luma_blue) + y
    green = (y - luma_blue * blue - luma_red * red) / luma_green
    rgb = np.stack([red, green, blue], axis=-1)
    out: np.ndarray = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out
