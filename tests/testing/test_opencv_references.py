"""crystal-rt's numpy references of OpenCV (CLAHE, 16-bit/float resize, 8-bit portable resize) against
OpenCV itself: the x86-64 cv2 here, and the aarch64 cv2 5.0.0 wheel's outputs kept in
tests/data/opencv-aarch64.npz (made with scripts/compare_opencv_arm64.py run --small under qemu);
then the CUDA kernels, in both arithmetics, against the references."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.runtime import preprocess
from crystal_rt.runtime.preprocess import resize_u8_portable
from crystal_rt.testing.clahe_reference import clahe_reference
from crystal_rt.testing.resize_reference import resize_reference

REPO = Path(__file__).resolve().parents[2]
AARCH64 = REPO / "tests" / "data" / "opencv-aarch64.npz"


def _script():  # the input generator shared with the machine that made the fixture
    spec = importlib.util.spec_from_file_location(
        "compare_opencv_arm64", REPO / "scripts" / "compare_opencv_arm64.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_ipp():
    use = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(use)


def test_references_equal_x86_opencv_on_random_images() -> None:
    rng = np.random.default_rng(11)
    for i in range(60):
        sh, sw = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        dh, dw = (
            (max(1, sh // 2), max(1, sw // 2))
            if i % 4 == 0
            else (int(rng.integers(1, 240)), int(rng.integers(1, 240)))
        )
        shape = (sh, sw) if i % 2 else (sh, sw, 3)
        u8 = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(
            resize_u8_portable(u8, dw, dh), cv2.resize(u8, (dw, dh), interpolation=cv2.INTER_LINEAR)
        )
        u16 = rng.integers(0, 65536, shape, dtype=np.uint16)
        assert np.array_equal(
            resize_reference(u16, dw, dh), cv2.resize(u16, (dw, dh), interpolation=cv2.INTER_LINEAR)
        )
        f32 = rng.random((sh, sw), dtype=np.float32)
        assert np.array_equal(
            resize_reference(f32, dw, dh), cv2.resize(f32, (dw, dh), interpolation=cv2.INTER_LINEAR)
        )
    for shape, dtype, grid in (
        ((97, 131), np.uint16, (7, 5)),
        ((240, 321), np.uint8, (8, 8)),
        ((1, 9), np.uint8, (8, 8)),
    ):
        top = 255 if dtype == np.uint8 else 65535
        img = rng.integers(0, top + 1, shape).astype(dtype)
        assert np.array_equal(clahe_reference(img, 2.0, grid), cv2.createCLAHE(2.0, grid).apply(img))


def test_fma_references_equal_aarch64_opencv() -> None:
    """The aarch64 wheel's fused arithmetic: CLAHE, 16-bit resize and float (mask paste) resize are
    exactly the fma references; 8-bit resize there is a HAL's, which crystal-rt does not follow."""
    data = np.load(AARCH64)
    assert json.loads(str(data["meta"]))["opencv"].startswith("5.0.0")
    module = _script()
    compared = 0
    for case in module.cases(small=True):
        img, name = case["img"], case["name"]
        if f"{name}-clahe" in data.files:
            want = data[f"{name}-clahe"]
            assert np.array_equal(clahe_reference(img, 2.0, case["grid"], fma=True), want), name
            assert not np.array_equal(clahe_reference(img, 2.0, case["grid"]), want) or img.dtype == np.uint8
            compared += 1
        if f"{name}-resize" in data.files:
            want = data[f"{name}-resize"]
            assert np.array_equal(resize_reference(img, want.shape[1], want.shape[0], fma=True), want), name
            compared += 1
    rng = np.random.default_rng(7)
    probs = rng.random((12, 30, 30), dtype=np.float32)
    for i, prob in enumerate(probs):
        want = data[f"paste-arr_{i}"]
        assert np.array_equal(resize_reference(prob, want.shape[1], want.shape[0], fma=True), want), i
    assert compared == 4


def test_aarch64_resizes_8bit_with_the_portable_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from crystal_rt import arith

    img = np.random.default_rng(2).integers(0, 256, (123, 157, 3), dtype=np.uint8)
    calls = []
    real = preprocess.resize_u8_portable
    monkeypatch.setattr(preprocess, "resize_u8_portable", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setenv(arith.ENV, "aarch64")
    on_arm = preprocess.resize_linear(img, 77, 61)
    monkeypatch.setenv(arith.ENV, "x86")
    on_x86 = preprocess.resize_linear(img, 77, 61)
    assert len(calls) == 1 and np.array_equal(on_arm, on_x86)


# ---- the kernels in both arithmetics --------------------------------------------------------------


def test_letterbox_kernel_in_both_arithmetics() -> None:
    from crystal_rt.cuda.launches import letterbox_launch
    from crystal_rt.spec import PreprocessSpec
    from crystal_rt.testing.emulator.kernels import emulated_module

    spec = PreprocessSpec.paper(clahe=False, input_size=256)
    module = emulated_module("letterbox")
    rng = np.random.default_rng(5)
    for shape, dtype in (((301, 403), np.uint16), ((150, 203, 3), np.uint16), ((333, 517), np.uint8)):
        top = 255 if dtype == np.uint8 else 65535
        img = rng.integers(0, top + 1, shape).astype(dtype)
        h, w = shape[:2]
        results = {}
        for fma in (False, True):
            out = np.zeros((1, 3, 256, 256), np.float32)
            launch, _ = letterbox_launch(img.ctypes.data, img.strides[0], h, w, 1 if img.ndim == 2 else 3,
                                             img.dtype, spec, out.ctypes.data, fma=fma)  # fmt: skip
            module.run(launch.kernel, launch.grid, launch.block, launch.args, launch.argtypes)
            _, nw, nh = preprocess.letterbox_size(h, w, 256)
            resized = (
                resize_reference(img, nw, nh, fma=fma)
                if dtype == np.uint16
                else resize_u8_portable(img, nw, nh)
            )
            canvas = np.zeros((256, 256, *img.shape[2:]), dtype)
            canvas[:nh, :nw] = resized
            assert np.array_equal(out, preprocess.normalize(canvas, spec)), (shape, fma)
            results[fma] = out
        if dtype == np.uint8:
            assert np.array_equal(results[False], results[True])  # 8-bit: one arithmetic everywhere


def test_paste_kernel_in_both_arithmetics(monkeypatch: pytest.MonkeyPatch) -> None:
    from crystal_rt.cuda.launches import paste_launch, paste_layout
    from crystal_rt.runtime import postprocess
    from crystal_rt.testing.emulator.kernels import emulated_module

    rng = np.random.default_rng(9)
    probs = rng.random((30, 28, 28), dtype=np.float32)
    h, w = 400, 500
    corners = zip(rng.uniform(-20, 480, 30), rng.uniform(-20, 380, 30), strict=True)
    sizes = zip(rng.uniform(1, 250, 30), rng.uniform(1, 250, 30), strict=True)
    boxes = [
        (float(x), float(y), float(x + bw), float(y + bh))
        for (x, y), (bw, bh) in zip(corners, sizes, strict=True)
    ]
    module = emulated_module("paste")
    for fma in (False, True):
        monkeypatch.setattr(
            postprocess, "resize_linear", lambda im, ww, hh, f=fma: resize_reference(im, ww, hh, fma=f)
        )
        layout = paste_layout(boxes, h, w)
        out = np.zeros(max(layout.total_bytes, 1), np.uint8)
        meta, offsets = np.ascontiguousarray(layout.meta), np.ascontiguousarray(layout.offsets)
        launch = paste_launch(
            probs.ctypes.data, 28, meta.ctypes.data, offsets.ctypes.data, layout, out.ctypes.data, fma
        )
        module.run(launch.kernel, launch.grid, launch.block, launch.args, launch.argtypes)
        for i, box in enumerate(boxes):
            crop, _, _ = layout.crop(out, i)
            assert np.array_equal(crop, postprocess.paste_mask(probs[i], box, h, w).crop), (fma, i)
