"""Result writers: per-image JSON, a COCO results file, a CSV of crystal points, overlay PNGs.

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
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..results.detection import DetectionResult, Instance

POINT_FIELDS = ("image", "x", "y", "score", "label", "index")
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


def render_overlay(image: np.ndarray, result: DetectionResult) -> np.ndarray:
    """RGB picture: masks tinted and outlined, boxes, score labels and centroid crosses."""
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
        cv2.putText(
            canvas,
            f"{inst.label_name} {inst.score:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thick,
            colour,
            thick,
            cv2.LINE_AA,
        )
    return canvas


def write_overlay(image: np.ndarray, result: DetectionResult, path: str | os.PathLike[str]) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(render_overlay(image, result), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode overlay for {path}")
    return atomic_write_bytes(path, buf.tobytes())
