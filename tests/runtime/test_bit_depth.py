"""Bit depth (design note 27): 16-bit images of b < 16 significant bits are expanded to the full
16-bit range before the recipe's first step; the bit depth comes from the call, the Detector or the
file, in that order; a low-range 16-bit image of unknown bit depth is warned about once. Then a
model trained on 8-bit images (the recipe's ``training_bit_depth``) gets 16-bit images mapped to 8
bits before CLAHE; one trained on 16-bit images gets 16-bit CLAHE."""

from __future__ import annotations

import io
import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from crystal_rt.errors import InvalidOption
from crystal_rt.evaluate.parity import compare_results
from crystal_rt.io.decode import DecodedImage, read_image, read_image_info
from crystal_rt.runtime import detector as detector_module
from crystal_rt.runtime.bit_depth import (
    OnceWarnings,
    check_bit_depth,
    expand_bit_depth,
    fit_bit_depth,
    full_range,
    resolve_bit_depth,
    to_training_bit_depth,
)
from crystal_rt.runtime.detector import Detector
from crystal_rt.spec import ModelSpec, PreprocessSpec

PICTURE = "97wo_01A_1.jpg"
TAG_4095 = [(281, "H", 3, (4095, 4095, 4095), True)]
LOGGER = "crystal_rt.bit_depth"


def _tiff(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _to_12_bits(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)


# --- the expansion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 16))
def test_expansion_is_round_v_times_65535_over_2b_minus_1(bits: int) -> None:
    top = (1 << bits) - 1
    codes = np.arange(top + 1, dtype=np.uint16)
    expanded, clipped = expand_bit_depth(codes, bits)
    assert expanded.dtype == np.uint16 and clipped == 0
    assert expanded[0] == 0 and expanded[-1] == 65535
    exact = [int(Fraction(int(v) * 65535, top) + Fraction(1, 2)) for v in codes[:: max(1, top // 97)]]
    np.testing.assert_array_equal(expanded[:: max(1, top // 97)], exact)
    assert np.all(np.diff(expanded.astype(np.int64)) > 0)


def test_values_above_the_bit_depth_are_clipped_and_counted() -> None:
    pixels = np.array([[0, 4095, 4096], [65535, 5000, 2048]], np.uint16)
    expanded, clipped = expand_bit_depth(pixels, 12)
    assert clipped == 3
    np.testing.assert_array_equal(expanded, [[0, 65535, 65535], [65535, 65535, 32776]])


def test_8_bit_images_and_16_bits_are_left_as_they_are() -> None:
    eight = np.array([[3, 200]], np.uint8)
    assert expand_bit_depth(eight, 4)[0] is eight  # 8-bit images are 8-bit
    sixteen = np.array([[3, 200]], np.uint16)
    assert expand_bit_depth(sixteen, 16)[0] is sixteen
    assert fit_bit_depth(eight, 4, warnings=OnceWarnings()) is eight


@pytest.mark.parametrize("bad", [0, 17, -1, 12.0, True, "12"])
def test_check_bit_depth_refuses_what_is_not_1_to_16(bad: object) -> None:
    with pytest.raises(InvalidOption, match="bit_depth must be"):
        check_bit_depth(bad)
    assert check_bit_depth(None) is None and check_bit_depth(np.int64(12)) == 12


def test_the_first_bit_depth_given_wins() -> None:
    assert resolve_bit_depth(None, 14, 12) == 14
    assert resolve_bit_depth(10, 14, 12) == 10
    assert resolve_bit_depth(None, None, 12) == 12
    assert resolve_bit_depth(None, None, None) is None


# --- which bit depth the Detector uses ------------------------------------------------------------


class _NoBackend:
    device = "cpu"
    name = "none"


def test_detector_passes_call_then_detector_then_file_bit_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []

    def fake_pipeline(pixels: np.ndarray, **kwargs: Any) -> None:
        seen.append(kwargs["bit_depth"])

    monkeypatch.setattr(detector_module, "run_pipeline", fake_pipeline)
    pixels = np.zeros((4, 4), np.uint16)
    tagged = DecodedImage(pixels, 12)
    plain = Detector(_NoBackend(), ModelSpec("maskrcnn_resnet18_fpn", 2), PreprocessSpec.paper())  # type: ignore[arg-type]
    with_bits = Detector(
        _NoBackend(), ModelSpec("maskrcnn_resnet18_fpn", 2), PreprocessSpec.paper(), bit_depth=14
    )  # type: ignore[arg-type]
    plain.detect_pixels(pixels)
    plain.detect_pixels(tagged)
    with_bits.detect_pixels(tagged)
    with_bits.detect_pixels(tagged, bit_depth=10)
    plain.detect(_tiff(pixels, extratags=[(281, "H", 1, 1023, True)]))
    plain.detect(_tiff(pixels, extratags=[(281, "H", 1, 1023, True)]), bit_depth=16)
    assert seen == [None, 12, 14, 10, 10, 16]
    with pytest.raises(InvalidOption):
        plain.detect_pixels(pixels, bit_depth=0)
    with pytest.raises(InvalidOption):
        Detector(_NoBackend(), ModelSpec("maskrcnn_resnet18_fpn", 2), PreprocessSpec.paper(), bit_depth=17)  # type: ignore[arg-type]


# --- the real image: 8, 12 and 16 bits ------------------------------------------------------------


@pytest.fixture(scope="module")
def picture(real_images: list[Path]) -> np.ndarray:
    path = next((p for p in real_images if p.name == PICTURE), None)
    if path is None:
        pytest.skip(f"{PICTURE} not among the real images")
    return read_image(path)


@pytest.fixture(scope="module")
def demo(demo_ort_engine: Path) -> Any:
    with Detector.load(demo_ort_engine) as det:
        yield det


def _same_detections(reference: Any, candidate: Any, threshold: float) -> Any:
    report = compare_results(reference, candidate, score_threshold=threshold, max_detections=1000)
    assert report.num_reference == report.num_candidate == report.matched, report
    assert min(report.box_ious, default=1.0) >= 0.99
    assert min(report.mask_ious, default=1.0) >= 0.99
    assert max(report.score_diffs, default=0.0) <= 2e-3
    return report


def _instances(result: Any) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = result.to_dict()["instances"]
    return instances


def test_12_bit_tiff_gives_the_8_bit_detections(
    demo: Any, picture: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The picture at 12 bits in a 16-bit TIFF gave 0 detections (4 % brightness after CLAHE); with
    the TIFF tag, or bit_depth=12, it gives what the 8-bit picture gives, instance for instance: the
    shipped model was trained on 8-bit images, so the expanded image is mapped to 8 bits before
    CLAHE (it gave the 16-bit CLAHE's 9 of the 8-bit picture's 10)."""
    assert demo.preprocess.training_bit_depth == 8
    eight = demo.detect_pixels(picture, name="8-bit")
    assert len(eight.instances) > 0
    x257 = demo.detect_pixels(picture.astype(np.uint16) * 257, name="x257")
    assert _instances(x257) == _instances(eight)

    v12 = _to_12_bits(picture)
    (tmp_path / "plain.tif").write_bytes(_tiff(v12, photometric="rgb"))
    (tmp_path / "tagged.tif").write_bytes(_tiff(v12, photometric="rgb", extratags=TAG_4095))
    (tmp_path / "packed.tif").write_bytes(_tiff(v12, photometric="rgb", bitspersample=12))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # processed as 16-bit data, nearly black: mapped to 8 bits, values 0..16 (the shipped model: 1 of 10)
        assert len(demo.detect(tmp_path / "plain.tif").instances) < len(eight.instances) / 2
    assert "plain.tif" in caplog.text and "--bit-depth 12" in caplog.text
    for result in (
        demo.detect(tmp_path / "tagged.tif"),
        demo.detect(tmp_path / "packed.tif"),
        demo.detect(tmp_path / "plain.tif", bit_depth=12),
        demo.detect_pixels(v12, bit_depth=12),
    ):
        assert _instances(result) == _instances(eight)


def test_a_model_trained_on_16_bit_images_gets_16_bit_clahe(
    demo_ort_engine: Path, picture: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``training_bit_depth: 16`` keeps 16-bit images 16-bit: CLAHE runs on the 16-bit values (65536
    bins), and a 12-bit image gives what the picture at 16 bits (x257) gives."""
    from crystal_rt.runtime import pipeline

    seen: list[np.dtype[Any]] = []
    apply = pipeline.apply_clahe

    def spy(image: np.ndarray, step: Any) -> np.ndarray:
        seen.append(image.dtype)
        return apply(image, step)

    monkeypatch.setattr(pipeline, "apply_clahe", spy)
    x257 = picture.astype(np.uint16) * 257
    with Detector.load(demo_ort_engine) as det:
        eight = det.detect_pixels(x257, name="x257 as 8 bits")
        det.preprocess = det.preprocess.with_overrides(training_bit_depth=16)
        sixteen = det.detect_pixels(x257, name="x257")
        twelve = det.detect_pixels(_to_12_bits(picture), bit_depth=12)
    assert seen == [np.uint8, np.uint16, np.uint16]
    assert len(sixteen.instances) > 0
    _same_detections(sixteen, twelve, det.score_threshold)
    assert _instances(sixteen) != _instances(eight)  # 16-bit CLAHE is another picture


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_training_bit_depth_8_maps_16_bit_images_by_round_v_over_257(dtype: Any) -> None:
    codes = np.arange(65536 if dtype == np.uint16 else 256, dtype=dtype)
    mapped = to_training_bit_depth(codes, 8)
    if dtype == np.uint8:
        assert mapped is codes  # 8-bit images are 8-bit
        return
    assert mapped.dtype == np.uint8
    exact = [int(Fraction(int(v), 257) + Fraction(1, 2)) for v in codes[::97]]
    np.testing.assert_array_equal(mapped[::97], exact)
    np.testing.assert_array_equal(mapped[np.arange(256) * 257], np.arange(256))
    assert to_training_bit_depth(codes, 16) is codes
    # a 12-bit picture expanded to 16 bits maps back to the 8-bit picture it was made from
    v8 = np.arange(256, dtype=np.uint8)
    v12 = _to_12_bits(v8)
    np.testing.assert_array_equal(to_training_bit_depth(expand_bit_depth(v12, 12)[0], 8), v8)


def test_detector_bit_depth_applies_to_16_bit_images_only(demo_ort_engine: Path, picture: np.ndarray) -> None:
    with Detector.load(demo_ort_engine, bit_depth=12) as twelve, Detector.load(demo_ort_engine) as plain:
        v12 = _to_12_bits(picture)
        _same_detections(plain.detect_pixels(picture.astype(np.uint16) * 257), twelve.detect_pixels(v12), 0.5)
        eight = plain.detect_pixels(picture)
        assert twelve.detect_pixels(picture).to_dict()["instances"] == eight.to_dict()["instances"]


# --- warnings -------------------------------------------------------------------------------------


def test_low_range_is_warned_once_per_detector(
    demo_ort_engine: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dim = np.full((64, 80), 3000, np.uint16)
    dim[10:20, 10:20] = 100
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with Detector.load(demo_ort_engine) as det:
            det.detect_pixels(dim, name="a.tif")
            det.detect_pixels(dim, name="b.tif")
            det.detect_pixels(dim, name="c.tif", bit_depth=12)  # known: nothing to say
            det.detect_pixels(np.full((64, 80), 40000, np.uint16), name="bright.tif")
            det.detect_pixels(np.full((64, 80), 30, np.uint8), name="eight.png")
        first = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        with Detector.load(demo_ort_engine) as det:
            det.detect_pixels(dim, name="d.tif")
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(first) == 1 and first[0].startswith("a.tif: a 16-bit image whose largest value is 3000")
    assert "--bit-depth 12" in first[0]
    assert len(messages) == 2 and messages[1].startswith("d.tif:")


def test_clipped_samples_are_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    pixels = np.array([[100, 5000], [4096, 4095]], np.uint16)
    notes = OnceWarnings()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = fit_bit_depth(pixels, 12, name="hot.tif", warnings=notes)
        fit_bit_depth(pixels, 12, name="hot2.tif", warnings=notes)
    np.testing.assert_array_equal(out, [[1600, 65535], [65535, 65535]])
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages == [
        "hot.tif: 2 sample(s) above 4095, the largest value of 12 bits, clipped to 65535; is the bit "
        "depth (12) right? (said once)"
    ]


# --- everything that preprocesses sees the same expansion -----------------------------------------


def test_triton_pre_model_and_calibration_expand_like_the_detector(tmp_path: Path) -> None:
    from crystal_rt.calibration.images import CalibrationImages
    from crystal_rt.runtime.preprocess import preprocess
    from crystal_rt.serve.triton import preprocess_bytes

    spec = PreprocessSpec.paper(input_size=64)
    rng = np.random.default_rng(0)
    v12 = rng.integers(0, 4096, size=(48, 56), dtype=np.int64).astype(np.uint16)
    tagged = _tiff(v12, extratags=[(281, "H", 1, 4095, True)])
    expected = preprocess(expand_bit_depth(v12, 12)[0], spec).tensor
    tensor, _ = preprocess_bytes(tagged, spec, max_pixels=10**6)
    np.testing.assert_array_equal(tensor, expected)
    for i in range(4):
        (tmp_path / f"{i}.tif").write_bytes(tagged)
    tensors = list(CalibrationImages(tmp_path, spec, num_images=4).tensors())
    assert len(tensors) == 4 and all(np.array_equal(t, expected) for t in tensors)
    assert np.array_equal(full_range(read_image_info(tagged)), expand_bit_depth(v12, 12)[0])


# --- the command line and the service -------------------------------------------------------------


def test_detect_command_bit_depth(
    demo_ort_engine: Path, picture: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crystal_rt.cli.main import main

    (tmp_path / "in").mkdir()
    v12 = _to_12_bits(picture)
    (tmp_path / "in" / "twelve.tif").write_bytes(_tiff(v12, photometric="rgb"))
    (tmp_path / "in" / "tagged.tif").write_bytes(_tiff(v12, photometric="rgb", extratags=TAG_4095))
    x257 = _tiff(picture.astype(np.uint16) * 257, photometric="rgb")
    with Detector.load(demo_ort_engine) as det:
        expected = len(det.detect(x257).instances)
        assert expected == len(det.detect_pixels(picture).instances)  # mapped to 8 bits: the 8-bit picture's
        untagged = len(det.detect(tmp_path / "in" / "twelve.tif").instances)  # 16-bit data, nearly black
    assert untagged < expected / 2
    capsys.readouterr()  # what the in-process Detector logged above is not the command's output
    counts = {}
    for option in ([], ["--bit-depth", "12"]):
        out = tmp_path / f"out{len(option)}"
        assert main(["detect", str(demo_ort_engine), str(tmp_path / "in"), "-o", str(out), *option]) == 0
        for name in ("twelve", "tagged"):
            counts[name, len(option)] = json.loads((out / f"{name}.tif.json").read_text())["num_instances"]
    err = capsys.readouterr().err
    assert expected > 0
    assert counts == {
        ("twelve", 0): untagged,
        ("tagged", 0): expected,
        ("twelve", 2): expected,
        ("tagged", 2): expected,
    }
    assert err.count("warning: twelve.tif: a 16-bit image whose largest value is 4095") == 1  # the first run
    assert err.count("--bit-depth 12") == 1


def test_watch_uses_the_file_bit_depth(demo_ort_engine: Path, picture: np.ndarray, tmp_path: Path) -> None:
    from crystal_rt.serve.watch import Watcher, WatchOptions

    (tmp_path / "in").mkdir()
    tagged = _tiff(_to_12_bits(picture), photometric="rgb", extratags=TAG_4095)
    (tmp_path / "in" / "tagged.tif").write_bytes(tagged)
    with Detector.load(demo_ort_engine) as det:
        expected = len(det.detect(tagged).instances)
        options = WatchOptions(tmp_path / "in", tmp_path / "out", stable_seconds=0.0, poll_seconds=0.01)
        stats = Watcher(det, options).run(once=True)
    assert stats.ok == 1 and expected > 0
    assert json.loads((tmp_path / "out" / "tagged.tif.json").read_text())["num_instances"] == expected


def test_http_bit_depth_query(demo_ort_engine: Path, picture: np.ndarray) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from crystal_rt.serve.http import create_app

    twelve = _tiff(_to_12_bits(picture), photometric="rgb")
    with Detector.load(demo_ort_engine) as det:
        expected = len(det.detect(twelve, bit_depth=12).instances)
        untagged = len(det.detect(twelve).instances)  # 16-bit data, nearly black
        with TestClient(create_app(det, warmup=False), raise_server_exceptions=False) as client:
            got = client.post("/v1/detect?bit_depth=12", content=twelve)
            plain = client.post("/v1/detect", content=twelve)
            bad = client.post("/v1/detect?bit_depth=17", content=twelve)
    assert got.status_code == 200 and got.json()["num_instances"] == expected > 0
    assert plain.json()["num_instances"] == untagged < expected / 2
    assert bad.status_code == 422 and "bit_depth must be in 1..16, got 17" in bad.json()["error"]["message"]
