"""Result writers: per-image JSON, a COCO results file, a CSV of crystal points, overlays (PNG,
or JPEG for JPEG inputs: :func:`overlay_suffix`) and a contact sheet of a folder.

Every file is written to a temporary name in the target's own folder and renamed into place, so a
reader (an imager's control software watching the output folder) never sees half a file; the
temporary name is short (a long target name cannot push it past the file-name limit) and removed
when the write fails (a full disk leaves no stray file behind).

Text cells of ``points.csv`` (the image name and the label) that a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) are prefixed with a
single quote, as OWASP recommends against CSV injection (:func:`csv_text`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..results.detection import DetectionResult, Instance

POINT_FIELDS = ("image", "x", "y", "score", "label", "index")

OverlayLabels = Literal["off", "score", "index"]
#: what an overlay writes beside each instance: nothing, ``crystal 0.97``, or its index in the JSON
OVERLAY_LABELS: tuple[str, ...] = ("off", "score", "index")
#: overlay file formats: auto is JPEG for JPEG inputs (a tenth of a PNG's size), else PNG
OVERLAY_FORMATS: tuple[str, ...] = ("auto", "png", "jpeg")
OVERLAY_SUFFIXES = (".overlay.png", ".overlay.jpg")
JPEG_QUALITY = 90
_JPEG_INPUTS = (".jpg", ".jpeg", ".jpe", ".jfif")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666) -> Path:
    """Write ``data`` to ``path`` durably through a temporary file beside it (``.NAME.XXXXXXXX.tmp``,
    the name cut to 40 characters, :data:`TEMP_NAME`): written, fsynced, renamed into place, and the
    folder fsynced, so that once this returns the file survives a power loss with its whole content
    (a journal that records it afterwards never points at an empty or missing file). Nothing is left
    behind when it fails. ``mode`` is the new file's permission bits (less the umask)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:40]}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


#: the temporary names :func:`atomic_write_bytes` uses (and older versions' quarantine copies,
#: ``.NAME.<pid>.tmp``): what a kill -9 mid-write leaves behind
TEMP_NAME = re.compile(r"\..{1,40}\.(?:[0-9a-f]{8}|[0-9]{1,10})\.tmp", re.DOTALL)


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make the names in ``folder`` (a rename, a new file) durable; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a folder: nothing more to be done
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``= + - @``, tab or CR gets a ``'``
    (OWASP's CSV-injection rule); file names that are not valid UTF-8 keep their bytes as ``\\xNN``,
    and a CR or LF in a name is written ``\\r`` / ``\\n`` (Python 3.11's csv module would not quote
    a lone CR, which splits the row)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def write_json(result: DetectionResult, path: str | os.PathLike[str]) -> Path:
    return atomic_write_bytes(path, (result.to_json(indent=2) + "\n").encode())


def coco_results(
    results: Sequence[DetectionResult], image_ids: Sequence[int] | None = None
) -> list[dict[str, object]]:
    """COCO detection results (``loadRes`` format), one entry per instance, with the file name added."""
    entries: list[dict[str, object]] = []
    for index, result in enumerate(results):
        image_id = image_ids[index] if image_ids is not None else index + 1
        for inst in result.instances:
            entries.append(
                {
                    "image_id": image_id,
                    "file_name": Path(result.image).name if result.image else None,
                    "category_id": inst.label,
                    "bbox": [round(float(v), 3) for v in inst.bbox_xywh],
                    "score": round(float(inst.score), 6),
                    "segmentation": inst.mask.to_rle(),
                    "area": inst.area,
                }
            )
    return entries


def write_coco(results: Sequence[DetectionResult], path: str | os.PathLike[str]) -> Path:
    return atomic_write_bytes(path, (json.dumps(coco_results(results)) + "\n").encode())


def point_row(image: str, inst: Instance, index: int) -> list[str]:
    """One ``points.csv`` row (POINT_FIELDS): image, centroid x, y (pixels), score, label name and
    the instance's index in the image's JSON; text cells go through :func:`csv_text`."""
    centroid = inst.centroid
    return [
        csv_text(image),
        f"{centroid['x']:.2f}",
        f"{centroid['y']:.2f}",
        f"{inst.score:.4f}",
        csv_text(inst.label_name),
        str(index),
    ]


def point_rows(result: DetectionResult, image: str | None = None) -> list[list[str]]:
    """The ``points.csv`` rows of one result (``image`` defaults to ``result.image``)."""
    name = (result.image or "") if image is None else image
    return [point_row(name, inst, index) for index, inst in enumerate(result.instances)]


def points_csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    """The header (POINT_FIELDS) and ``rows`` as UTF-8 CSV text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(POINT_FIELDS)
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_points_csv(results: Iterable[DetectionResult], path: str | os.PathLike[str]) -> Path:
    """One row per instance (POINT_FIELDS): image, centroid x, y (pixels), score, label, index."""
    return atomic_write_bytes(path, points_csv_bytes(row for r in results for row in point_rows(r)))


def display_rgb(image: np.ndarray) -> np.ndarray:
    """8-bit RGB for display: gray replicated, 16-bit stretched to its 99.9th percentile."""
    if image.dtype != np.uint8:
        top = float(np.percentile(image, 99.9)) or 1.0
        image = np.clip(image.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image)


_PALETTE = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 100, 255), (0, 255, 200)]


def render_overlay(
    image: np.ndarray, result: DetectionResult, *, labels: OverlayLabels = "score"
) -> np.ndarray:
    """RGB picture: masks tinted and outlined, boxes, centroid crosses and, per ``labels``, each
    instance's ``label score`` (score), its index in the JSON and ``points.csv`` (index), or no
    text (off: dense drops, where the labels would cover the crystals)."""
    if labels not in OVERLAY_LABELS:
        raise ValueError(f"overlay labels must be one of {', '.join(OVERLAY_LABELS)}, not {labels!r}")
    canvas: np.ndarray = display_rgb(image).copy()
    thick = max(1, round(max(canvas.shape[:2]) / 600))
    for k, inst in enumerate(result.instances):
        colour = _PALETTE[k % len(_PALETTE)]
        m = inst.mask
        h, w = m.crop.shape
        if h and w:
            region = canvas[m.y0 : m.y0 + h, m.x0 : m.x0 + w]
            tint = (region[m.crop] * 0.55 + np.array(colour) * 0.45).astype(np.uint8)
            region[m.crop] = tint
            contours, _ = cv2.findContours(
                m.crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(region, contours, -1, colour, thick)
        x1, y1, x2, y2 = (round(v) for v in inst.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick)
        cx, cy = round(inst.centroid["x"]), round(inst.centroid["y"])
        cv2.drawMarker(canvas, (cx, cy), colour, cv2.MARKER_CROSS, 6 * thick + 4, thick)
        if labels == "off":
            continue
        cv2.putText(
            canvas,
            str(k) if labels == "index" else f"{inst.label_name} {inst.score:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thick,
            colour,
            thick,
            cv2.LINE_AA,
        )
    return canvas


def overlay_suffix(image_name: str, overlay_format: str = "auto") -> str:
    """``.overlay.jpg`` or ``.overlay.png``: JPEG where asked, or (auto) where the input is a JPEG
    (its overlay then costs about what the input does, not a multiple of it), else PNG."""
    if overlay_format not in OVERLAY_FORMATS:
        raise ValueError(
            f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}, not {overlay_format!r}"
        )
    if overlay_format == "auto":
        overlay_format = "jpeg" if Path(image_name).suffix.lower() in _JPEG_INPUTS else "png"
    return ".overlay.jpg" if overlay_format == "jpeg" else ".overlay.png"


def encode_rgb(rgb: np.ndarray, path: str | os.PathLike[str]) -> bytes:
    """An RGB picture as the file ``path`` names: JPEG (quality 90) for ``.jpg``/``.jpeg``, else PNG."""
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else []
    ok, buf = cv2.imencode(".jpg" if jpeg else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"could not encode a picture for {path}")
    return bytes(buf.tobytes())


def write_overlay(
    image: np.ndarray,
    result: DetectionResult,
    path: str | os.PathLike[str],
    *,
    labels: OverlayLabels = "score",
) -> Path:
    """The overlay (:func:`render_overlay`) as PNG, or JPEG where ``path`` ends in ``.jpg``."""
    return atomic_write_bytes(path, encode_rgb(render_overlay(image, result, labels=labels), path))


def thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` shrunk (never enlarged) to fit in ``side`` x ``side``, aspect kept (OpenCV INTER_AREA)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w, 1))
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


_CAPTION_FONT = (cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)


def caption_chars(side: int) -> int:
    """How many characters of a contact-sheet caption fit under a ``side``-px picture."""
    font, scale, thick = _CAPTION_FONT
    (char_w, _), _ = cv2.getTextSize("M", font, scale, thick)  # the widest letter
    return max(4, (side - 4) // max(char_w, 1))


def contact_sheet(
    tiles: Sequence[tuple[np.ndarray, str]], *, side: int = 256, columns: int | None = None
) -> np.ndarray:
    """One RGB picture of many: each thumbnail (:func:`thumbnail`, centred on a ``side``-px square)
    above its caption, in rows of ``columns`` (default: 12, as a 96-well plate's rows, for more
    than 48 pictures, else about twice as wide as high). A caption longer than
    :func:`caption_chars` is cut, ending in ``..``; ``…`` prints as ``..`` and other characters the
    Hershey font lacks as ``?``."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one picture")
    n = len(tiles)
    cols = columns or (12 if n > 48 else max(1, min(n, math.ceil(math.sqrt(2 * n)))))
    rows = math.ceil(n / cols)
    font, scale, thick = _CAPTION_FONT
    (_, text_h), base = cv2.getTextSize("M", font, scale, thick)
    caption_h = text_h + base + 8
    gap = 4
    cell_w, cell_h = side + gap, side + caption_h + gap
    sheet = np.full((rows * cell_h + gap, cols * cell_w + gap, 3), 24, np.uint8)
    fits = caption_chars(side)
    for i, (rgb, caption) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = gap + c * cell_w, gap + r * cell_h
        small = thumbnail(display_rgb(rgb), side)
        h, w = small.shape[:2]
        oy, ox = y0 + (side - h) // 2, x0 + (side - w) // 2
        sheet[oy : oy + h, ox : ox + w] = small
        text = caption.replace("…", "..").encode("ascii", "replace").decode("ascii")
        if len(text) > fits:
            text = text[: fits - 2] + ".."
        cv2.putText(
            sheet, text, (x0 + 2, y0 + side + text_h + 4), font, scale, (235, 235, 235), thick, cv2.LINE_AA
        )
    return sheet


def write_contact_sheet(
    tiles: Sequence[tuple[np.ndarray, str]], path: str | os.PathLike[str], *, side: int = 256
) -> Path:
    """:func:`contact_sheet` written to ``path`` (JPEG for ``.jpg``, else PNG)."""
    return atomic_write_bytes(path, encode_rgb(contact_sheet(tiles, side=side), path))
