"""Property-based fuzzing: decoders and annotation readers fail only with their typed errors."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from crystal_rt.data.coco import CocoDataset
from crystal_rt.data.labelme import read_labelme
from crystal_rt.errors import InvalidDataset, InvalidImage
from crystal_rt.io.decode import read_image

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PIXELS = 1 << 18  # mutated headers may claim large sizes: keep every decode small


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = []
    for arr in (gray, rgb, (rgb.astype(np.uint16) * 257), gray.astype(np.uint16) * 257):
        out.append(cv2.imencode(".png", arr)[1].tobytes())
    out.append(cv2.imencode(".jpg", rgb)[1].tobytes())
    buf = io.BytesIO()
    Image.fromarray(rgb).save(
        buf, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03"
    )
    out.append(buf.getvalue())
    for arr, kw in (
        (gray.astype(np.uint16), {}),
        (rgb, {"compression": "zlib"}),
        (gray.astype(np.float32), {}),
    ):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG")
    out.append(buf.getvalue())
    return out


SEEDS = _seeds()


def _decode(data: bytes) -> None:
    try:
        arr = read_image(data, max_pixels=MAX_PIXELS, name="fuzz")
    except InvalidImage as exc:
        assert exc.path == "fuzz"
        return
    assert arr.dtype in (np.uint8, np.uint16) and arr.ndim in (2, 3) and arr.flags.c_contiguous


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_invalid_image(data: bytes) -> None:
    _decode(data)


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        if kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif not data:
            break
        elif kind == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # a byte anywhere, or in the first 64 bytes (headers: sizes, depths, offsets)
            limit = len(data) - 1 if kind == "flip" else min(63, len(data) - 1)
            data[draw(st.integers(0, limit))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_png_jpeg_tiff_only_raise_invalid_image(data: bytes) -> None:
    _decode(data)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
NUMBER = st.integers(-5, 40) | st.floats(-5, 40, allow_nan=False) | st.just("7") | st.none()
POINT = st.lists(NUMBER, min_size=0, max_size=3)


def _shape() -> Any:
    return st.fixed_dictionaries(
        {"label": st.sampled_from(["crystal", "", 3]) | JSON, "points": st.lists(POINT, max_size=5) | JSON},
        optional={
            "shape_type": st.sampled_from(["polygon", "rectangle", "circle", "mask", "line", "point", "x"])
            | JSON,
            "group_id": st.none() | st.integers(-1, 3) | JSON,
            "mask": st.text(max_size=12) | JSON,
        },
    )


LABELME = st.fixed_dictionaries(
    {"shapes": st.lists(_shape(), max_size=4) | JSON},
    optional={
        "imageHeight": NUMBER | JSON,
        "imageWidth": NUMBER | JSON,
        "imagePath": st.sampled_from(["a.png", "", "../x.png", "/nope.png"]) | JSON,
        "imageData": st.sampled_from(["", "aGVsbG8=", "!!notbase64", "iVBORw0KGgo="]) | JSON,
    },
)


def _read_labelme(data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.json"
        path.write_text(json.dumps(data))
        try:
            read_labelme(path)
        except InvalidDataset as exc:
            assert exc.path is not None and "a.json" in exc.path


@FUZZ
@given(JSON | LABELME)
def test_random_labelme_only_raises_invalid_dataset(data: Any) -> None:
    _read_labelme(data)


def _annotation() -> Any:
    return st.fixed_dictionaries(
        {"id": NUMBER | JSON, "image_id": NUMBER | JSON, "category_id": NUMBER | JSON},
        optional={
            "segmentation": st.lists(st.lists(NUMBER, max_size=8), max_size=2)
            | st.fixed_dictionaries(
                {"size": st.lists(NUMBER, max_size=3), "counts": st.text(max_size=8) | POINT}
            )
            | JSON,
            "bbox": st.lists(NUMBER, max_size=5) | JSON,
            "iscrowd": st.integers(-1, 2) | JSON,
            "area": NUMBER,
        },
    )


COCO = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {"id": NUMBER | JSON, "width": NUMBER | JSON, "height": NUMBER | JSON, "file_name": JSON}
            ),
            max_size=3,
        )
        | JSON,
        "annotations": st.lists(_annotation(), max_size=3) | JSON,
        "categories": st.lists(
            st.fixed_dictionaries({"id": NUMBER | JSON, "name": st.sampled_from(["crystal", ""]) | JSON}),
            max_size=3,
        )
        | JSON,
    }
)


@FUZZ
@given(JSON | COCO)
def test_random_coco_only_raises_invalid_dataset(data: Any) -> None:
    with contextlib.suppress(InvalidDataset):
        CocoDataset.from_dict(data, source=Path("fuzz.json"))


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[]", b'{"shapes": "x"}'])
def test_labelme_file_level_errors(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(data)
    with pytest.raises(InvalidDataset):
        read_labelme(path)
