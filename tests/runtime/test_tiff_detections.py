"""The real picture as TIFF (compressed, CMYK, palette, MinIsWhite) gives the JPEG's detections
through the demo engine (design note 28). Before: CMYK gave 3 unrelated instances, the palette and
MinIsWhite files 0, LZW and JPEG TIFFs were refused without imagecodecs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from crystal_rt.evaluate.parity import compare_results
from crystal_rt.io.decode import read_image
from crystal_rt.runtime.detector import Detector

PICTURE = "97wo_01A_1.jpg"


def _tiff(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _cmyk(rgb: np.ndarray) -> np.ndarray:
    """K = 255 - max(R, G, B), C = 255 - R * 255 / (255 - K), ...: prepress-style black generation."""
    rgb_i = rgb.astype(np.int64)
    k = 255 - rgb_i.max(axis=2, keepdims=True)
    cmy = 255 - np.rint(rgb_i * 255 / np.maximum(255 - k, 1))
    return np.concatenate([np.clip(cmy, 0, 255), k], axis=2).astype(np.uint8)


def _shuffled_gray_palette(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lossless: the 256 grays in a shuffled order, so that the indices are not the grays."""
    order = np.random.default_rng(0).permutation(256)
    colormap = np.repeat(order[None, :], 3, axis=0).astype(np.uint16) * 257
    return np.argsort(order).astype(np.uint8)[gray], colormap


@pytest.fixture(scope="module")
def jpeg(real_images: list[Path]) -> Path:
    path = next((p for p in real_images if p.name == PICTURE), None)
    if path is None:
        pytest.skip(f"{PICTURE} not among the real images")
    return path


@pytest.fixture(scope="module")
def demo(demo_ort_engine: Path) -> Any:
    with Detector.load(demo_ort_engine) as det:
        yield det


def _check_same(reference: Any, candidate: Any, threshold: float, iou: float = 0.99) -> None:
    report = compare_results(reference, candidate, score_threshold=threshold, max_detections=1000)
    assert report.num_reference == report.num_candidate == report.matched > 0, report
    assert min(report.box_ious) >= iou and min(report.mask_ious) >= iou - 0.05, report


def test_cmyk_and_compressed_tiffs_give_the_jpeg_detections(demo: Any, jpeg: Path) -> None:
    rgb = read_image(jpeg)
    reference = demo.detect(jpeg)
    variants = {
        "cmyk": _tiff(_cmyk(rgb), photometric="separated"),
        "lzw": _tiff(rgb, photometric="rgb", compression="lzw"),
        "deflate": _tiff(rgb, photometric="rgb", compression="zlib"),
    }
    for name, data in variants.items():
        decoded = read_image(data, name=name)
        assert np.abs(decoded.astype(int) - rgb).max() <= 1, name
        _check_same(reference, demo.detect(data, name=name), demo.score_threshold)
    jpeg_tiff = _tiff(rgb, compression="jpeg", compressionargs={"level": 95})  # stored as YCbCr
    assert np.abs(read_image(jpeg_tiff).astype(int) - rgb).mean() < 1.0
    _check_same(reference, demo.detect(jpeg_tiff), demo.score_threshold, iou=0.9)


def test_min_is_white_and_palette_tiffs_give_the_jpeg_detections(demo: Any, jpeg: Path) -> None:
    """Gray variants of the picture (its green channel): MinIsWhite against the same gray as PNG, a
    palette of its grays against the same gray as RGB; both find the JPEG's instances."""
    gray = np.ascontiguousarray(read_image(jpeg)[..., 1])
    gray_rgb = np.repeat(gray[..., None], 3, axis=2)
    reference = demo.detect(jpeg)
    white = _tiff(255 - gray, photometric="miniswhite")
    indices, colormap = _shuffled_gray_palette(gray)
    palette = _tiff(indices, photometric="palette", colormap=colormap)
    np.testing.assert_array_equal(read_image(white), gray)
    np.testing.assert_array_equal(read_image(palette), gray_rgb)
    for data, same in ((white, _png(gray)), (palette, _png(gray_rgb))):
        result = demo.detect(data)
        _check_same(demo.detect(same), result, demo.score_threshold, iou=0.999)
        report = compare_results(reference, result, score_threshold=demo.score_threshold, max_detections=1000)
        # The gray is not the colour picture, only close to it: one detection near the threshold
        # may be kept on one side only (with the shipped model one of 10 at 0.90 swaps for
        # another at 0.903); every other one must be matched.
        assert report.matched >= len(reference.instances) - 1
        assert len(result.instances) - report.matched <= 1


def _to_12_bits(pixels: np.ndarray) -> np.ndarray:
    return np.rint(pixels.astype(np.float64) * 4095 / 255).astype(np.uint16)


def test_12_bit_tiffs_give_the_8_bit_pictures_detections(demo: Any, real_images: list[Path]) -> None:
    """Each real picture at 12 bits in a 16-bit TIFF (MaxSampleValue 4095, or packed 12-bit samples)
    gives the 8-bit picture's instances, exactly: the shipped model was trained on 8-bit images, so
    the expanded image is mapped back to 8 bits before CLAHE (16-bit CLAHE gave 9 of the first
    picture's 10)."""
    assert demo.preprocess.training_bit_depth == 8
    for path in real_images:
        picture = read_image(path)
        v12 = _to_12_bits(picture)
        photometric = "rgb" if picture.ndim == 3 else "minisblack"
        samples = 3 if picture.ndim == 3 else 1
        tagged = _tiff(v12, photometric=photometric, extratags=[(281, "H", samples, (4095,) * samples, True)])
        packed = _tiff(v12, photometric=photometric, bitspersample=12)
        eight = demo.detect(path).to_dict()["instances"]
        assert eight, path.name
        for name, data in (("tagged", tagged), ("packed", packed)):
            assert demo.detect(data, name=name).to_dict()["instances"] == eight, (path.name, name)
