"""The CUDA kernels on a real device through crystal_rt.cuda (skipped without a GPU).

Same comparisons as tests/cuda_emu: letterbox/normalise equals the CPU preprocessing within 1e-6,
paste equals postprocess.paste_mask pixel for pixel. The CPU functions resize with OpenCV's own
code (never Intel IPP: preprocess.resize_linear), which the kernels reproduce.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crystal_rt.runtime.postprocess import paste_mask
from crystal_rt.runtime.preprocess import apply_clahe, letterbox, normalize
from crystal_rt.spec import PreprocessSpec

pytestmark = pytest.mark.gpu
TOL = 1e-6
M = 28


def cpu_reference(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    return normalize(letterbox(apply_clahe(img, spec), spec.input_size)[0], spec)


@pytest.fixture(scope="module")
def cuda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("cuda.bindings.driver", reason="cuda-python is not installed")
    from crystal_rt.cuda import launch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTAL_RT_CACHE", str(tmp_path_factory.mktemp("gpu-cache")))
        launch.ensure_context(0)
        yield launch


def upload(launch: Any, array: np.ndarray) -> Any:
    buf = launch.DeviceBuffer()
    buf.upload(np.ascontiguousarray(array))
    launch.synchronize()
    return buf


def run_letterbox(
    launch: Any, module: Any, img: np.ndarray, spec: PreprocessSpec, stream: Any = None
) -> np.ndarray:
    size = spec.input_size
    src = upload(launch, img)
    out = launch.DeviceBuffer(3 * size * size * 4)
    try:
        channels = 1 if img.ndim == 2 else 3
        pitch = img.shape[1] * channels * img.dtype.itemsize
        spec_launch, _ = launch.letterbox_launch(
            src.ptr, pitch, img.shape[0], img.shape[1], channels, img.dtype, spec, out.ptr
        )
        module.launch(spec_launch, stream)
        host = launch.download(out.ptr, out.nbytes, stream)
        return host.view(np.float32).reshape(1, 3, size, size)
    finally:
        src.free()
        out.free()


def random_image(rng: np.random.Generator, h: int, w: int, dtype: Any, rgb: bool) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(h, w, 3) if rgb else (h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_letterbox_on_device(cuda: Any, dtype: Any, rgb: bool) -> None:
    module = cuda.Module("letterbox")
    rng = np.random.default_rng(1)
    for h, w, size in [
        (1, 1, 32),
        (1024, 1024, 512),
        (1024, 700, 512),
        (300, 200, 512),
        (17, 250, 64),
        (999, 1281, 512),
    ]:
        spec = PreprocessSpec.paper(input_size=size, clahe=False)
        img = random_image(rng, h, w, dtype, rgb)
        got = run_letterbox(cuda, module, img, spec)
        diff = float(np.abs(got - cpu_reference(img, spec)).max())
        assert diff <= TOL, (h, w, size, diff)
    module.close()


def test_letterbox_real_images(cuda: Any, real_images: list[Path]) -> None:
    from crystal_rt.io.decode import read_image

    module = cuda.Module("letterbox")
    spec = PreprocessSpec.paper(clahe=False)
    for path in real_images:
        img = read_image(path)
        assert float(np.abs(run_letterbox(cuda, module, img, spec) - cpu_reference(img, spec)).max()) <= TOL
    module.close()


def test_paste_on_device(cuda: Any) -> None:
    rng = np.random.default_rng(2)
    h, w = 480, 640
    n = 40
    probs = rng.random((n, M, M), dtype=np.float32)
    boxes = []
    for _ in range(n):
        bw, bh = float(rng.uniform(0.1, 500)), float(rng.uniform(0.1, 400))
        x1, y1 = float(rng.uniform(-100, w)), float(rng.uniform(-100, h))
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    boxes[0] = (100.0, 100.0, 114.0, 114.0)  # expands to a small box
    dev = upload(cuda, probs)
    paster = cuda.GpuMaskPaster()
    try:
        crops = paster(dev.ptr, M, boxes, h, w)
    finally:
        dev.free()
    for k, (crop, x0, y0) in enumerate(crops):
        want = paste_mask(probs[k], boxes[k], h, w)
        assert crop.shape == want.crop.shape
        if crop.size:
            assert (x0, y0) == (want.x0, want.y0)
        assert np.array_equal(crop, want.crop), k
    paster.close()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_preprocessor_with_clahe(cuda: Any, dtype: Any) -> None:
    from crystal_rt.cuda.preprocessor import GpuPreprocessor

    spec = PreprocessSpec.paper(input_size=256)
    pre = GpuPreprocessor(spec)
    rng = np.random.default_rng(3)
    driver = pytest.importorskip("cuda.bindings.driver")
    err, stream = driver.cuStreamCreate(0)
    assert err == driver.CUresult.CUDA_SUCCESS
    try:
        for h, w in [(300, 400), (517, 389), (64, 64)]:
            yy, xx = np.mgrid[0:h, 0:w]
            top = 255 if dtype == np.uint8 else 65535
            img = ((np.sin(xx / 17.0) * np.cos(yy / 11.0) * 0.4 + 0.5) * top).astype(dtype)
            img = np.clip(
                img.astype(np.int64) + rng.integers(-top // 20, top // 20, img.shape), 0, top
            ).astype(dtype)
            src = upload(cuda, img)
            out = cuda.DeviceBuffer(3 * 256 * 256 * 4)
            scale = pre(src.ptr, w * img.dtype.itemsize, h, w, dtype, 1, out.ptr, stream)
            got = cuda.download(out.ptr, out.nbytes, stream).view(np.float32).reshape(1, 3, 256, 256)
            assert scale == 256 / max(h, w)
            diff = float(np.abs(got - cpu_reference(img, spec)).max())
            assert diff <= TOL, (h, w, diff)
            src.free()
            out.free()
    finally:
        driver.cuStreamDestroy(stream)
        pre.close()


def test_preprocessor_rgb(cuda: Any) -> None:
    """8-bit RGB: CLAHE on L of LAB on the device; 16-bit RGB + CLAHE is refused; without CLAHE both work."""
    from crystal_rt.cuda.preprocessor import GpuPreprocessor
    from crystal_rt.errors import BackendUnavailable

    rng = np.random.default_rng(4)
    out = cuda.DeviceBuffer(3 * 64 * 64 * 4)
    for dtype in (np.uint8, np.uint16):
        img = random_image(rng, 120, 90, dtype, True)
        src = upload(cuda, img)
        pitch = 90 * 3 * img.dtype.itemsize
        for clahe in (True, False):
            spec = PreprocessSpec.paper(input_size=64, clahe=clahe)
            pre = GpuPreprocessor(spec)
            if clahe and dtype == np.uint16:
                with pytest.raises(BackendUnavailable):
                    pre(src.ptr, pitch, 120, 90, dtype, 3, out.ptr)
            else:
                pre(src.ptr, pitch, 120, 90, dtype, 3, out.ptr)
                got = cuda.download(out.ptr, out.nbytes).view(np.float32).reshape(1, 3, 64, 64)
                assert float(np.abs(got - cpu_reference(img, spec)).max()) <= TOL, (dtype, clahe)
            pre.close()
        src.free()
    out.free()


def test_external_stream_handles(cuda: Any) -> None:
    """A stream created elsewhere works as CUstream, int, or wrapped like PyCUDA/CuPy/torch."""
    driver = pytest.importorskip("cuda.bindings.driver")
    err, stream = driver.cuStreamCreate(0)
    assert err == driver.CUresult.CUDA_SUCCESS
    module = cuda.Module("letterbox")
    spec = PreprocessSpec.paper(input_size=64, clahe=False)
    img = random_image(np.random.default_rng(5), 50, 70, np.uint8, False)
    want = cpu_reference(img, spec)

    class Wrapped:
        def __init__(self, **kw: int) -> None:
            self.__dict__.update(kw)

    handle = int(stream)
    try:
        for s in (
            stream,
            handle,
            Wrapped(handle=handle),
            Wrapped(ptr=handle),
            Wrapped(cuda_stream=handle),
            None,
        ):
            assert float(np.abs(run_letterbox(cuda, module, img, spec, s) - want).max()) <= TOL
    finally:
        driver.cuStreamDestroy(stream)
        module.close()
