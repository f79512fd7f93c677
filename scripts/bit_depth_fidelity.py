"""One picture in many encodings through the demo engine: how many instances each gives and how
they match the 8-bit JPEG's and the 16-bit (x257) image's (design notes 27 and 28).

The picture is ``tests/data/real/97wo_01A_1.jpg`` (8-bit RGB). Each variant is written to a
file and read back by ``Detector.detect`` (the real decoder):

* ``x257``: the JPEG's pixels x 257 in a 16-bit TIFF (the same picture at 16 bits);
* ``12-bit``: ``round(v * 4095 / 255)`` in a 16-bit TIFF, untagged, tagged (MaxSampleValue 4095),
  packed (BitsPerSample 12), as a 16-bit PNG with sBIT 12, and untagged with ``bit_depth=12``;
* 8-bit TIFFs: LZW, Deflate, JPEG (stored as YCbCr), CMYK (K = 255 - max(R, G, B)), a 256-colour
  palette, and the JPEG's gray (green) channel as MinIsWhite against the same gray as a PNG.

Matching: pairs of the same label with box IoU >= 0.5, assigned greedily by IoU
(``crystal_rt.evaluate.parity.compare_results``); "min box/mask IoU" are over the matched pairs.

    python scripts/bit_depth_fidelity.py [--engine DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "tests" / "data" / "real" / "97wo_01A_1.jpg"
GREEN_GRAY, GREEN_RGB = "8-bit gray PNG (green channel)", "8-bit RGB PNG (green channel x 3)"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", type=Path, help="an engine folder (default: the demo model, built here)")
    p.add_argument("--picture", type=Path, default=PICTURE)
    p.add_argument("--json", type=Path)
    return p.parse_args()


def to_12_bits(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)


def tiff(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def png16_with_sbit(rgb16: np.ndarray, bits: int) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("cannot encode PNG")
    png = buf.tobytes()
    chunk = b"sBIT" + bytes([bits] * 3)
    return png[:33] + (3).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + png[33:]


def cmyk_of(rgb: np.ndarray) -> np.ndarray:
    rgb_i = rgb.astype(np.int64)
    k = 255 - rgb_i.max(axis=2, keepdims=True)
    cmy = 255 - np.rint(rgb_i * 255 / np.maximum(255 - k, 1))
    return np.concatenate([np.clip(cmy, 0, 255), k], axis=2).astype(np.uint8)


def palette_of(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 256-colour median-cut palette (lossy): indices and the TIFF colour map."""
    im = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette = np.array(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    palette = np.vstack([palette, np.zeros((256 - len(palette), 3), np.uint8)])
    return np.asarray(im), palette.T.astype(np.uint16) * 257


def gray_palette_of(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 256 grays in a shuffled order (lossless): indices and the TIFF colour map."""
    order = np.random.default_rng(0).permutation(256)  # entry i is gray order[i]
    index_of = np.argsort(order).astype(np.uint8)
    colormap = np.repeat(order[None, :], 3, axis=0).astype(np.uint16) * 257
    return index_of[gray], colormap


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def variants(picture: Path) -> dict[str, tuple[bytes, int | None]]:
    """name -> (file bytes, bit_depth= for the call)."""
    from crystal_rt.io.decode import read_image

    rgb = read_image(picture)
    v12 = to_12_bits(rgb)
    gray = np.ascontiguousarray(rgb[..., 1])
    indices, colormap = palette_of(rgb)
    gray_indices, gray_map = gray_palette_of(gray)
    tag = [(281, "H", 3, (4095, 4095, 4095), True)]
    return {
        "8-bit JPEG": (picture.read_bytes(), None),
        "16-bit x257 TIFF": (tiff(rgb.astype(np.uint16) * 257, photometric="rgb"), None),
        "12-bit TIFF, untagged": (tiff(v12, photometric="rgb"), None),
        "12-bit TIFF, MaxSampleValue 4095": (tiff(v12, photometric="rgb", extratags=tag), None),
        "12-bit TIFF, BitsPerSample 12": (tiff(v12, photometric="rgb", bitspersample=12), None),
        "12-bit PNG, sBIT 12": (png16_with_sbit(v12, 12), None),
        "12-bit TIFF, untagged, bit_depth=12": (tiff(v12, photometric="rgb"), 12),
        "8-bit TIFF, LZW": (tiff(rgb, photometric="rgb", compression="lzw"), None),
        "8-bit TIFF, Deflate": (tiff(rgb, photometric="rgb", compression="zlib"), None),
        "8-bit TIFF, JPEG (YCbCr)": (tiff(rgb, compression="jpeg", compressionargs={"level": 95}), None),
        "8-bit TIFF, CMYK": (tiff(cmyk_of(rgb), photometric="separated"), None),
        "8-bit TIFF, palette (256 colours)": (tiff(indices, photometric="palette", colormap=colormap), None),
        GREEN_RGB: (png(np.repeat(gray[..., None], 3, axis=2)), None),
        "8-bit TIFF, palette (green's grays, shuffled)": (
            tiff(gray_indices, photometric="palette", colormap=gray_map),
            None,
        ),
        GREEN_GRAY: (png(gray), None),
        "8-bit TIFF, MinIsWhite (green channel)": (tiff(255 - gray, photometric="miniswhite"), None),
    }


def match(reference: Any, candidate: Any, threshold: float) -> dict[str, Any]:
    from crystal_rt.evaluate.parity import compare_results

    report = compare_results(reference, candidate, score_threshold=threshold, max_detections=1000)
    return {
        "matched": report.matched,
        "min_box_iou": round(min(report.box_ious, default=1.0), 4),
        "min_mask_iou": round(min(report.mask_ious, default=1.0), 4),
        "max_score_diff": round(max(report.score_diffs, default=0.0), 4),
    }


def demo_engine(folder: Path) -> Path:
    from crystal_rt.assets import demo_model
    from crystal_rt.build.engine import build_engine

    build_engine(demo_model(), folder, backend="onnxruntime")
    return folder


def measure(engine: Path, picture: Path) -> list[dict[str, Any]]:
    from crystal_rt.errors import CrystalRtError
    from crystal_rt.runtime.detector import Detector

    rows: list[dict[str, Any]] = []
    with Detector.load(engine) as det, tempfile.TemporaryDirectory() as tmp:
        results, refused = {}, {}
        for i, (name, (data, bits)) in enumerate(variants(picture).items()):
            path = Path(tmp) / f"variant-{i}"
            path.write_bytes(data)
            try:
                results[name] = det.detect(path, name=name, **({} if bits is None else {"bit_depth": bits}))
            except (CrystalRtError, TypeError) as exc:  # TypeError: a version without bit_depth=
                refused[name] = str(exc).replace(str(path), "FILE")
        gray, gray_rgb = results[GREEN_GRAY], results[GREEN_RGB]
        eight, x257 = results["8-bit JPEG"], results["16-bit x257 TIFF"]
        for name, result in results.items():
            row: dict[str, Any] = {"variant": name, "instances": len(result.instances)}
            row["vs 8-bit"] = match(eight, result, det.score_threshold)
            row["vs x257"] = match(x257, result, det.score_threshold)
            if "green" in name:  # the gray variants against the same gray (RGB for the palette)
                same = gray if "MinIsWhite" in name or name == GREEN_GRAY else gray_rgb
                row["vs green"] = match(same, result, det.score_threshold)
            rows.append(row)
        rows.extend({"variant": name, "refused": message} for name, message in refused.items())
    return rows


def _pairs(m: dict[str, Any]) -> str:
    return f"{m['matched']:>2} matched, IoU box >= {m['min_box_iou']:.4f}, mask >= {m['min_mask_iou']:.4f}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line a variant: instances; matched to the 8-bit JPEG's; matched to the x257 image's (the
    green-channel variants: to the green channel's own PNG), with the largest score difference."""
    print(f"{'variant':46} inst  {'vs the 8-bit JPEG':45}  vs x257 (green variants: vs the green PNG)")
    for row in rows:
        if "refused" in row:
            print(f"{row['variant']:46} refused: {row['refused']}")
            continue
        other = row.get("vs green", row["vs x257"])
        print(
            f"{row['variant']:46} {row['instances']:>4}  {_pairs(row['vs 8-bit']):45}  {_pairs(other)}, "
            f"scores within {other['max_score_diff']:.4f}"
        )


def clahe_brightness(picture: Path) -> dict[str, float]:
    """Mean of the CLAHE output (the demo recipe's step) in % of the image type's range, and the
    expansion's time (median of 20, ms), for the picture at 8 bits, x257, and 12 bits as is and
    expanded."""
    import statistics
    import time

    from crystal_rt.io.decode import read_image
    from crystal_rt.runtime.bit_depth import expand_bit_depth
    from crystal_rt.runtime.preprocess import apply_clahe
    from crystal_rt.spec import Clahe

    step = Clahe(2.0, (8, 8))
    rgb = read_image(picture)
    v12 = to_12_bits(rgb)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        expanded, _ = expand_bit_depth(v12, 12)
        times.append((time.perf_counter() - t0) * 1e3)

    def percent(image: np.ndarray) -> float:
        return round(100.0 * float(apply_clahe(image, step).mean()) / np.iinfo(image.dtype).max, 2)

    return {
        "8-bit": percent(rgb),
        "x257": percent(rgb.astype(np.uint16) * 257),
        "12-bit as is": percent(v12),
        "12-bit expanded": percent(expanded),
        "x257_difference": int(np.abs(expanded.astype(np.int64) - rgb.astype(np.int64) * 257).max()),
        "expansion_ms": round(statistics.median(times), 2),
    }


def main() -> int:
    args = parse_args()
    if not args.picture.is_file():
        print(f"picture not found: {args.picture}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine or demo_engine(Path(tmp) / "demo")
        rows = measure(engine, args.picture)
    print_rows(rows)
    try:
        brightness = clahe_brightness(args.picture)
    except ImportError as exc:  # a crystal-rt before the bit-depth expansion (to measure "before")
        print(f"no bit-depth expansion in this crystal-rt ({exc})")
        return 0
    print(
        "mean after CLAHE, % of the range: "
        + ", ".join(f"{k} {brightness[k]:.2f}" for k in ("8-bit", "x257", "12-bit as is", "12-bit expanded"))
        + f"; expanded 12-bit vs x257: largest difference {brightness['x257_difference']}"
        + f"; expanding {args.picture.name} from 12 bits: {brightness['expansion_ms']:.2f} ms (median of 20)"
    )
    if args.json:
        args.json.write_text(json.dumps({"variants": rows, "clahe": brightness}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
