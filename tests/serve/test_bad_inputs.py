"""Bad inputs through the library (Detector), the HTTP service and the watcher (docs/bad-inputs.md).

Each bad input gives a typed error naming the input; nothing crashes; the service and the watcher
keep working afterwards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import jpeg_bytes, png_bytes

from crystal_rt.data.synthetic import make_drop
from crystal_rt.errors import (
    CrystalRtError,
    EngineIncompatible,
    EngineNotFound,
    InvalidDataset,
    InvalidImage,
    MissingDependency,
)
from crystal_rt.io.decode import read_image
from crystal_rt.runtime.backends.base import Backend
from crystal_rt.runtime.detector import Detector
from crystal_rt.serve.http import create_app
from crystal_rt.serve.watch import Watcher, WatchOptions

BASE = make_drop(5, 96, 128).image  # 8-bit gray, 128 wide, 96 high
RGB = np.dstack([BASE, BASE // 2, 255 - BASE])


def _pil(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _tiff(arr: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A valid PNG header claiming width x height, with a tiny IDAT: a bomb, built cheaply."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    return _pil(Image.fromarray(RGB), "JPEG", exif=exif.tobytes())


def _exif_upright() -> np.ndarray:
    """What _exif_rotated() shows: its stored pixels (as Pillow decodes them) turned 90° clockwise."""
    with Image.open(io.BytesIO(_exif_rotated())) as stored:
        return np.ascontiguousarray(np.rot90(np.asarray(stored.convert("RGB")), -1))


def _palette_tiff() -> bytes:
    order = np.random.default_rng(0).permutation(256)  # entry i is gray order[i]
    colormap = np.repeat(order[None, :], 3, axis=0).astype(np.uint16) * 257
    return _tiff(np.argsort(order).astype(np.uint8)[BASE], photometric="palette", colormap=colormap)


def _cmyk_tiff() -> bytes:
    k = 255 - RGB.max(axis=2, keepdims=True).astype(np.int64)
    cmy = 255 - np.rint(RGB * 255 / np.maximum(255 - k, 1))
    return _tiff(np.concatenate([np.clip(cmy, 0, 255), k], axis=2).astype(np.uint8), photometric="separated")


def _twelve_bit_tiff() -> bytes:
    v12 = np.rint(BASE.astype(np.float64) * 4095 / 255).astype(np.uint16)
    return _tiff(v12, extratags=[(281, "H", 1, 4095, True)])


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n"


def _float_nan_tiff() -> bytes:
    arr = BASE.astype(np.float32) / 255
    arr[10, 10] = np.nan
    return _tiff(arr)


def _retagged_tiff(arr: np.ndarray, changes: dict[int, tuple[int, int]], **kw: Any) -> bytes:
    """A TIFF of ``arr`` with first-page tags renumbered and set ({old code: (new code, value)}):
    how the bombs' few bytes are written (tests/io/test_decode.py builds the same)."""
    data = _tiff(arr, **kw)
    out = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for code, (new_code, value) in changes.items():
            tag = tif.pages.first.tags[code]
            struct.pack_into("<H", out, tag.offset, new_code)
            struct.pack_into("<I" if int(tag.dtype) == 4 else "<H", out, tag.valueoffset, value)
    return bytes(out)


def _depth_bomb(side: int, depth: int) -> bytes:
    """side x side, ImageDepth (32997) ``depth``: a private tag renumbered."""
    zeros = np.zeros((side, side), np.uint8)
    return _retagged_tiff(
        zeros, {65000: (32997, depth)}, compression="zlib", extratags=[(65000, "I", 1, 1, True)]
    )


def _tile_bomb() -> bytes:
    """16x16 pixels in one 32768 x 32768 Zstd tile (TileWidth / TileLength rewritten)."""
    zeros = np.zeros((16, 16), np.uint8)
    return _retagged_tiff(zeros, {322: (322, 32768), 323: (323, 32768)}, compression="zstd", tile=(16, 16))


@dataclass(frozen=True)
class Case:
    id: str
    filename: str
    make: Callable[[], bytes]
    error: str | None = None  # a fragment of the InvalidImage message; None: it works
    status: int = 422
    shape: tuple[int, int] = (96, 128)  # (height, width) of the result when it works
    upright: Callable[[], np.ndarray] | None = None  # the pixels it must decode to, where checked


CASES = [
    Case("empty", "empty.png", lambda: b"", "empty file"),
    Case("truncated-jpeg", "cut.jpg", lambda: jpeg_bytes(RGB)[:700], "truncated or corrupt JPEG"),
    Case("truncated-png", "cut.png", lambda: png_bytes(BASE)[:300], "truncated or corrupt PNG"),
    Case(
        "truncated-png16",
        "cut16.png",
        lambda: png_bytes(RGB.astype(np.uint16) * 257)[:300],
        "truncated or corrupt",
    ),
    Case("text", "notes.txt", lambda: b"plate 7, drop A1: crystals?\n", "not a recognised image format"),
    Case(
        "onnx-bytes", "model.onnx", lambda: b"\x08\x09\x12\x07pytorch" + bytes(200), "not a recognised image"
    ),
    Case(
        "html",
        "error.html",
        lambda: b"<!doctype html><html><body>502</body></html>",
        "not a recognised image",
    ),
    Case("png-named-jpg", "really_png.jpg", lambda: png_bytes(BASE)),
    Case("text-named-png", "text.png", lambda: b"just text", "not a recognised image format"),
    Case("png16-gray", "g16.png", lambda: png_bytes(BASE.astype(np.uint16) * 257)),
    Case("png16-rgb", "c16.png", lambda: png_bytes(RGB.astype(np.uint16) * 257)),
    Case("tiff16", "t16.tif", lambda: _tiff(BASE.astype(np.uint16) * 257)),
    Case("float-tiff-nan", "nan.tif", _float_nan_tiff, "unsupported pixel type float32"),
    Case("int16-tiff", "i16.tif", lambda: _tiff(BASE.astype(np.int16)), "unsupported pixel type int16"),
    Case("lzw-tiff", "lzw.tif", lambda: _tiff(RGB, photometric="rgb", compression="lzw")),
    Case("jpeg-tiff", "jpeg.tif", lambda: _tiff(RGB, compression="jpeg")),
    Case("min-is-white-tiff", "white.tif", lambda: _tiff(255 - BASE, photometric="miniswhite")),
    Case("palette-tiff", "palette.tif", _palette_tiff),
    Case("cmyk-tiff", "cmyk.tif", _cmyk_tiff),
    Case("12-bit-tiff", "t12.tif", _twelve_bit_tiff),
    Case(
        "cielab-tiff",
        "lab.tif",
        lambda: _tiff(RGB, photometric="cielab"),
        "unsupported TIFF photometric interpretation CIELAB",
    ),
    Case("eps", "drop.eps", lambda: EPS, "not a supported image format: PostScript / EPS"),
    Case("gif", "drop.gif", lambda: _pil(Image.fromarray(BASE), "GIF"), "not a supported image format: GIF"),
    Case("rgba", "rgba.png", lambda: _pil(Image.fromarray(RGB).convert("RGBA"), "PNG")),
    Case("palette", "palette.png", lambda: _pil(Image.fromarray(RGB).convert("P"), "PNG")),
    Case("1-bit", "bits.png", lambda: _pil(Image.fromarray(BASE > 128), "PNG")),
    Case("cmyk-jpeg", "cmyk.jpg", lambda: _pil(Image.fromarray(RGB).convert("CMYK"), "JPEG")),
    Case("exif-rotated", "rotated.jpg", _exif_rotated, shape=(128, 96), upright=_exif_upright),
    Case("0x0", "zero.png", lambda: png_claiming(0, 0), "not a recognised image format"),
    Case("1x1", "one.png", lambda: png_bytes(np.full((1, 1), 200, np.uint8)), shape=(1, 1)),
    Case("constant", "flat.png", lambda: png_bytes(np.full((96, 128), 128, np.uint8))),
    Case("bomb-20000x20000", "bomb.png", lambda: png_claiming(20000, 20000), "image too large", 413),
    Case(
        "bomb-png16-colour", "bomb16.png", lambda: png_claiming(20000, 20000, 16, 2), "image too large", 413
    ),
    Case(
        "bomb-tiff-image-depth",
        "depth.tif",
        lambda: _depth_bomb(1000, 3000),
        "1000x1000x3000 (ImageDepth 3000) = 3000000000 pixels",
        413,
    ),
    Case("bomb-tiff-tile", "tile.tif", _tile_bomb, "its tile of 32768x32768 = 1073741824 pixels", 413),
    Case("tiff-volume", "volume.tif", lambda: _depth_bomb(16, 3), "unsupported TIFF layout: ImageDepth 3"),
    Case(
        "png-compressed-tiff",
        "pngc.tif",
        lambda: _tiff(RGB, compression="png", tile=(16, 16), photometric="rgb"),
        "unsupported TIFF compression PNG (34933)",
    ),
]
IDS = [c.id for c in CASES]


def _upright_instances(detector: Detector, upright: Callable[[], np.ndarray]) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = detector.detect(upright()).to_dict()["instances"]
    assert instances, "the tiny model finds nothing on the upright picture: the comparison would be empty"
    return instances


GOOD = png_bytes(BASE)


# --- library ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_library(case: Case, detector: Detector, tmp_path: Path) -> None:
    path = tmp_path / case.filename
    path.write_bytes(case.make())
    start = time.perf_counter()
    if case.error is None:
        result = detector.detect(path)
        assert (result.height, result.width) == case.shape
        assert result.image == str(path)
        if case.upright is not None:  # the pixels decoded, and the detections on them
            np.testing.assert_array_equal(read_image(path), case.upright())
            assert result.to_dict()["instances"] == _upright_instances(detector, case.upright)
        return
    with pytest.raises(InvalidImage) as err:
        detector.detect(path)
    assert case.error in err.value.message and err.value.path == str(path)
    if case.status == 413:
        assert time.perf_counter() - start < 1.0  # refused before decoding


def test_library_missing_file(detector: Detector, tmp_path: Path) -> None:
    before = detector.detect(GOOD).to_dict()["instances"]
    with pytest.raises(InvalidImage) as err:
        detector.detect(tmp_path / "gone.png")
    assert err.value.message == "file not found" and err.value.path == str(tmp_path / "gone.png")
    # ... and keeps working: the good image's answer is what it was before the missing file.
    assert detector.detect(GOOD).to_dict()["instances"] == before


def _detect_in_thread(detector: Detector, path: Path) -> BaseException | None:
    """``detector.detect(path)``'s error; fails the test if the call blocks (then a writer is opened
    on the FIFO so that the blocked open returns)."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            detector.detect(path)
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # lets the blocked open() return
        thread.join(10)
        pytest.fail(f"detect({path.name}) blocked on a named pipe")
    return outcome[0]


def test_library_named_pipe_is_refused_unread(detector: Detector, tmp_path: Path) -> None:
    """A FIFO with no writer made open() block for ever (issue 29, item 8)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    error = _detect_in_thread(detector, fifo)
    assert isinstance(error, InvalidImage), error
    assert "is a named pipe (FIFO), not a regular file; refused unread" in error.message
    assert error.path == str(fifo)
    assert detector.detect(GOOD).width == 128


@pytest.mark.parametrize("via_link", [False, True], ids=["device", "link-to-device"])
def test_library_dev_zero_is_refused_unread(detector: Detector, tmp_path: Path, via_link: bool) -> None:
    """/dev/zero was read until memory ran out (issue 29, item 8); a link to it is the same file."""
    path = Path("/dev/zero")
    if via_link:
        path = tmp_path / "zero.png"
        path.symlink_to("/dev/zero")
    with pytest.raises(InvalidImage) as err:
        detector.detect(path)
    assert "is a character device, not a regular file; refused unread" in err.value.message
    assert err.value.path == str(path)


def test_library_exif_rotation_matches_rotated_pixels(detector: Detector) -> None:
    rotated = detector.detect(_exif_rotated(), score_threshold=0.0)
    upright = detector.detect(_exif_upright(), score_threshold=0.0)
    assert (rotated.width, rotated.height) == (upright.width, upright.height) == (96, 128)
    assert rotated.instances, "at score 0 the tiny model keeps detections: the comparison is not empty"
    assert rotated.to_dict()["instances"] == upright.to_dict()["instances"]


# --- HTTP -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(detector: Detector) -> Any:
    with TestClient(create_app(detector, max_concurrency=2, queue_size=4)) as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_http(case: Case, http: Any, detector: Detector) -> None:
    answer = http.post(f"/v1/detect?name={case.filename}", content=case.make())
    if case.error is None:
        assert answer.status_code == 200, answer.text
        assert (answer.json()["height"], answer.json()["width"]) == case.shape
        if case.upright is not None:  # the same detections as on the upright pixels
            assert answer.json()["instances"] == _upright_instances(detector, case.upright)
    else:
        assert answer.status_code == case.status, answer.text
        error = answer.json()["error"]
        expected = "ImageTooLarge" if case.status == 413 else "InvalidImage"  # ImageTooLarge(InvalidImage)
        assert error["type"] == expected and case.error in error["message"]
        assert error["input"] == case.filename


def test_http_still_serving_after_bad_inputs(http: Any) -> None:
    for case in CASES:
        if case.error is not None:
            http.post(f"/v1/detect?name={case.filename}", content=case.make())
    assert http.post("/v1/detect", content=GOOD).status_code == 200
    assert http.get("/readyz").status_code == 200


def test_http_multipart_bad_file(http: Any) -> None:
    answer = http.post("/v1/detect", files={"image": ("page.html", b"<html></html>", "text/html")})
    assert answer.status_code == 422 and answer.json()["error"]["input"] == "page.html"
    broken = http.post(
        "/v1/detect", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"}
    )
    assert broken.status_code == 422 and broken.json()["error"]["type"] == "InvalidImage"
    assert http.post("/v1/detect", content=GOOD).status_code == 200


# --- watcher ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def watched(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    root = tmp_path_factory.mktemp("bad-watch")
    in_dir, out = root / "in", root / "out"
    in_dir.mkdir()
    for case in CASES:
        (in_dir / case.filename).write_bytes(case.make())
    (in_dir / "good.png").write_bytes(GOOD)
    patterns = ("*.png", "*.jpg", "*.tif", "*.txt", "*.onnx", "*.html", "*.eps", "*.gif")
    opts = WatchOptions(in_dir, out, patterns=patterns, stable_seconds=0.0, poll_seconds=0.01)
    stats = Watcher(detector, opts).run(once=True)
    return in_dir, out, stats


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_watcher(case: Case, watched: tuple[Path, Path, Any], detector: Detector) -> None:
    in_dir, out, _ = watched
    if case.id == "empty":  # not picked up while empty (the imager may not have written it yet)
        assert (in_dir / case.filename).exists() and not (out / f"{case.filename}.json").exists()
        assert not (out / "quarantine" / f"{case.filename}.reason.txt").exists()
    elif case.error is None:
        data = json.loads((out / f"{case.filename}.json").read_text())
        assert (data["height"], data["width"]) == case.shape and data["image"] == case.filename
        if case.upright is not None:  # the same detections as on the upright pixels
            assert data["instances"] == _upright_instances(detector, case.upright)
    else:  # recorded and copied; the input folder is never changed
        assert (in_dir / case.filename).exists() and (out / "quarantine" / case.filename).is_file()
        reason = (out / "quarantine" / f"{case.filename}.reason.txt").read_text()
        kind = "ImageTooLarge" if case.status == 413 else "InvalidImage"
        assert reason.startswith(f"{kind}: ") and case.error in reason and case.filename in reason
    assert (out / "good.png.json").is_file()


def test_watcher_totals_and_keeps_going(watched: tuple[Path, Path, Any], detector: Detector) -> None:
    in_dir, out, stats = watched
    bad = sum(1 for c in CASES if c.error is not None and c.id != "empty")
    assert (stats.ok, stats.quarantined, stats.errors) == (len(CASES) - bad - 1 + 1, bad, 0)
    (in_dir / "after.png").write_bytes(GOOD)
    opts = WatchOptions(in_dir, out, stable_seconds=0.0, poll_seconds=0.01)
    assert Watcher(detector, opts).run(once=True).ok == 1


def test_watcher_file_vanishing_is_not_quarantined(detector: Detector, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "gone.png"
    path.write_bytes(GOOD)
    watcher = Watcher(detector, WatchOptions(tmp_path / "in", tmp_path / "out", stable_seconds=0.0))
    state = watcher.scan()["gone.png"]
    path.unlink()
    assert watcher.process("gone.png", state).status == "changed"
    assert not (tmp_path / "out" / "quarantine").exists()


# --- engines ----------------------------------------------------------------------------------
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 12345678\n"


def _engine_copy(tiny: Any, tmp_path: Path) -> tuple[Path, Path, Path]:
    dst = tmp_path / "engine"
    shutil.copytree(tiny.engine_dir, dst)
    return dst, dst / "tiny.manifest.json", dst / "tiny.onnx"


def _edit_manifest(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _bad_engine(kind: str, tiny: Any, tmp_path: Path) -> tuple[Path, type[CrystalRtError], str]:
    """(ENGINE argument, error type, a fragment of the message) for one kind of bad engine."""
    dst, manifest, model = _engine_copy(tiny, tmp_path)
    if kind == "onnx-without-manifest":
        return tiny.onnx, EngineNotFound, "tiny.onnx"
    if kind == "pytorch-checkpoint":
        return tiny.checkpoint, EngineNotFound, "tiny.pt"
    if kind == "lfs-pointer-as-engine":
        (tmp_path / "model.onnx").write_bytes(LFS_POINTER)
        return tmp_path / "model.onnx", EngineNotFound, "model.onnx"
    if kind == "lfs-pointer-in-place-of-model":
        model.write_bytes(LFS_POINTER)
        return dst, EngineIncompatible, "tiny.manifest.json"
    if kind == "truncated-model":
        model.write_bytes(model.read_bytes()[:5000])
        return dst, EngineIncompatible, "tiny.manifest.json"
    if kind == "tensorrt-plan":
        _edit_manifest(manifest, backend="tensorrt", backend_version="10.3.0", engine_file="tiny.plan")
        return dst, MissingDependency, "tensorrt"  # TensorRT absent here (BackendUnavailable where present)
    if kind == "other-onnxruntime":
        _edit_manifest(manifest, backend_version="1.2.3")
        return dst, EngineIncompatible, "tiny.manifest.json"
    if kind == "other-machine":
        _edit_manifest(manifest, machine="aarch64-jetson")
        return dst, EngineIncompatible, "tiny.manifest.json"
    if kind == "same-size-other-bytes":  # the manifest's size matches, the content does not
        model.write_bytes(bytes(model.stat().st_size))
        return dst, EngineIncompatible, "does not match the SHA-256"
    if kind == "manifest-garbage":
        manifest.write_text("{not json")
        return dst, EngineIncompatible, "tiny.manifest.json"
    raise AssertionError(kind)


ENGINE_KINDS = [
    "onnx-without-manifest",
    "pytorch-checkpoint",
    "lfs-pointer-as-engine",
    "lfs-pointer-in-place-of-model",
    "truncated-model",
    "tensorrt-plan",
    "other-onnxruntime",
    "other-machine",
    "same-size-other-bytes",
    "manifest-garbage",
]


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_bad_engine(kind: str, tiny: Any, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:

    engine, error, fragment = _bad_engine(kind, tiny, tmp_path)
    with pytest.raises(error) as err:
        Detector.load(engine)
    assert fragment in str(err.value)
    _commands_refuse_in_one_line(engine, fragment, tmp_path, capsys)


def _commands_refuse_in_one_line(engine: Path, fragment: str, tmp_path: Path, capsys: Any) -> None:
    """``serve``, ``watch`` and ``detect`` on ``engine``: exit 1, one ``error:`` line with ``fragment``."""
    from crystal_rt.cli import main as cli_main

    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "good.png").write_bytes(GOOD)
    for argv in (
        ["serve", str(engine)],
        ["watch", str(engine), str(tmp_path / "in"), "-o", str(tmp_path / "o")],
        ["detect", str(engine), str(tmp_path / "in"), "-o", str(tmp_path / "d")],
    ):
        capsys.readouterr()
        assert cli_main.main(argv) == 1
        err_text = capsys.readouterr().err.strip()
        assert err_text.startswith("error:") and "Traceback" not in err_text, err_text
        assert len(err_text.splitlines()) == 1 and fragment in err_text, err_text


def _outside_copy(model: Path, tmp_path: Path) -> Path:
    """The engine's model file copied outside the engine folder (same bytes, so size and SHA-256
    match the manifest: only where it lies is wrong)."""
    outside = tmp_path / "elsewhere" / model.name
    outside.parent.mkdir()
    shutil.copyfile(model, outside)
    return outside


def _malformed_manifest(kind: str, manifest: Path, model: Path, tmp_path: Path) -> str:
    """Spoil ``manifest`` one way; the fragment its refusal must carry."""
    if kind == "deeply-nested":  # was RecursionError
        manifest.write_text(
            '{"format": "crystal-rt-engine", "build_options": ' + "[" * 100_000 + "]" * 100_000 + "}"
        )
        return "engine manifest nested too deeply to parse"
    if kind == "nested-past-the-limit":
        data = json.loads(manifest.read_text())
        data["build_options"] = {"x": json.loads("[" * 40 + "]" * 40)}
        manifest.write_text(json.dumps(data))
        return "engine manifest nested more than 32 levels deep"
    if kind == "engine-file-list":  # was TypeError
        _edit_manifest(manifest, engine_file=[model.name])
        return "engine_file must be a string, got list"
    if kind == "engine-bytes-infinite":  # was OverflowError
        _edit_manifest(manifest, engine_bytes=float("inf"))
        return "engine_bytes must be a whole number of bytes"
    if kind == "preprocess-not-an-object":
        _edit_manifest(manifest, preprocess="clahe")
        return "preprocess must be an object, got str"
    if kind == "engine-file-absolute":  # was: the file outside loaded
        _edit_manifest(manifest, engine_file=str(_outside_copy(model, tmp_path)))
        return "engine_file must be a file name in the manifest's folder"
    if kind == "engine-file-dotdot":
        _outside_copy(model, tmp_path)
        _edit_manifest(manifest, engine_file=f"../elsewhere/{model.name}")
        return "engine_file must be a file name in the manifest's folder, got '../elsewhere/tiny.onnx'"
    if kind == "engine-file-link-out":
        outside = _outside_copy(model, tmp_path)
        model.unlink()
        model.symlink_to(outside)
        return "engine_file tiny.onnx is a link out of the engine folder"
    if kind == "over-1-MiB":  # valid JSON, padded
        manifest.write_text(manifest.read_text() + " " * 2**20)
        return "engine manifest larger than 1048576 bytes (a manifest is a few KB); not read"
    raise AssertionError(kind)


MANIFEST_KINDS = [
    "deeply-nested",
    "nested-past-the-limit",
    "engine-file-list",
    "engine-bytes-infinite",
    "preprocess-not-an-object",
    "engine-file-absolute",
    "engine-file-dotdot",
    "engine-file-link-out",
    "over-1-MiB",
]


@pytest.mark.parametrize("kind", MANIFEST_KINDS)
def test_malformed_manifest(kind: str, tiny: Any, tmp_path: Path, capsys: Any) -> None:
    """One EngineIncompatible naming the manifest from Detector.load, serve, watch and detect, never
    a traceback; never an engine file outside the manifest's folder (issue 29, item 7)."""
    dst, manifest, model = _engine_copy(tiny, tmp_path)
    fragment = _malformed_manifest(kind, manifest, model, tmp_path)
    with pytest.raises(EngineIncompatible) as err:
        Detector.load(dst)
    assert fragment in err.value.message and err.value.path == str(manifest)
    _commands_refuse_in_one_line(dst, fragment, tmp_path, capsys)


# --- datasets and threads ---------------------------------------------------------------------
def test_malformed_labelme_through_convert(tmp_path: Path) -> None:
    from crystal_rt.data.convert import convert

    bad = tmp_path / "a.json"
    bad.write_text(
        json.dumps({"shapes": [{"label": "crystal", "points": [[1, 2], "x"], "shape_type": "polygon"}]})
    )
    with pytest.raises(InvalidDataset) as err:
        convert([bad], tmp_path / "coco.json")
    assert "a.json" in str(err.value)


def test_sixteen_threads_share_one_detector(detector: Detector) -> None:
    """16 threads call one Detector at once (each image 4 times): results equal the sequential ones."""
    images = [make_drop(40 + i, 96 + 8 * i, 120).image for i in range(4)]
    expected = [detector.detect(im).to_dict() for im in images]
    for e in expected:
        e.pop("timings_ms")
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(index: int) -> None:
        try:
            barrier.wait()
            d = detector.detect(images[index % len(images)]).to_dict()
            d.pop("timings_ms")
            results[index] = d
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 16
    for index, d in results.items():
        assert d == expected[index % len(images)]


class _GatedBackend(Backend):
    """The real ONNX Runtime backend, each ``infer`` held at a gate until the test opens it: puts a
    call in flight at a known moment (the engine itself runs unchanged)."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device
        self.entered, self.gate = threading.Event(), threading.Event()

    def infer(self, images: np.ndarray) -> Any:
        self.entered.set()
        assert self.gate.wait(60)
        return self.inner.infer(images)

    def close(self) -> None:
        self.inner.close()


def test_close_waits_for_the_call_in_flight_and_refuses_later_ones(tiny: Any) -> None:
    """close() during a call: the call finishes with its result, close() returns after it, a call
    made once close() has begun raises InvalidOption (was: InferenceError 'NoneType' object has no
    attribute 'run'; issue 29, item 9)."""
    from crystal_rt.errors import InvalidOption

    loaded = Detector.load(tiny.engine_dir, threads=1)
    gated = _GatedBackend(loaded.backend)
    det = Detector(gated, loaded.model, loaded.preprocess)
    outcome: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            outcome["result"] = det.detect(BASE)
        except BaseException as exc:  # reported below
            outcome["result"] = exc

    caller = threading.Thread(target=in_flight)
    caller.start()
    assert gated.entered.wait(60)  # the call is inside the engine
    closer = threading.Thread(target=det.close)
    closer.start()
    closer.join(0.5)
    late_error: BaseException | None = None
    try:
        det.detect(BASE)
    except BaseException as exc:  # reported below
        late_error = exc
    gated.gate.set()
    caller.join(60)
    closer.join(60)
    assert not closer.is_alive() and not caller.is_alive()
    assert not isinstance(outcome["result"], BaseException), outcome["result"]
    assert outcome["result"].width == 128
    assert isinstance(late_error, InvalidOption) and "this Detector is closed" in late_error.message
    with pytest.raises(InvalidOption, match="this Detector is closed"):
        det.detect_pixels(BASE)


def test_threads_hammering_detect_while_close_is_called(tiny: Any) -> None:
    """8 threads call detect in a loop; close() mid-way: every call returns a result or raises
    InvalidOption, never another error, and each thread ends on InvalidOption."""
    from crystal_rt.errors import InvalidOption

    det = Detector.load(tiny.engine_dir, threads=1)
    image = make_drop(3, 64, 80).image
    done = threading.Semaphore(0)
    unexpected: list[BaseException] = []
    last: dict[int, BaseException] = {}

    def hammer(index: int) -> None:
        while True:
            try:
                det.detect(image)
                done.release()
            except InvalidOption as exc:
                last[index] = exc
                return
            except BaseException as exc:  # reported below
                unexpected.append(exc)
                done.release()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for _ in range(24):  # calls running in every thread
        assert done.acquire(timeout=60)
    det.close()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert unexpected == []
    assert len(last) == 8 and all("this Detector is closed" in str(e) for e in last.values())


def test_closed_detector_and_non_image_inputs_are_typed(tiny: Any) -> None:
    from crystal_rt.errors import InvalidOption

    det = Detector.load(tiny.engine_dir, threads=1)
    for bad in ([1, 2], None, 7, "a\0b.png"):
        with pytest.raises(InvalidImage):
            det.detect(bad)  # type: ignore[arg-type]
    det.close()
    for source in (BASE, GOOD, None):
        with pytest.raises(InvalidOption, match="this Detector is closed"):
            det.detect(source)  # type: ignore[arg-type]
