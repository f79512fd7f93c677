"""``crystal-rt cuda`` without a GPU, and the import hygiene of crystal_rt.cuda (no cuda import)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.cli import main as cli_main
from crystal_rt.spec import PreprocessSpec

HAS_GPU = os.path.exists("/dev/nvidia0")


def _nvrtc_or_skip() -> None:
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python is not installed")
    from crystal_rt.cuda import build

    try:
        build.nvrtc_version()
    except Exception as exc:
        pytest.skip(f"NVRTC is not usable: {exc}")


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``crystal-rt ARGV`` through cli.main (registering the cuda command if main lacks it)."""
    monkeypatch.setitem(cli_main.COMMANDS, "cuda", "cuda")
    monkeypatch.setenv("COLUMNS", "200")
    return cli_main.main(argv)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the default arch is found")
def test_build_without_gpu_needs_arch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kernel_cache: Path
) -> None:
    code = run_cli(["cuda", "build"], monkeypatch)
    captured = capsys.readouterr()
    assert code == 1
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "--arch" in lines[0] and lines[0].startswith("error:")


def test_build_for_named_arch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kernel_cache: Path
) -> None:
    _nvrtc_or_skip()
    code = run_cli(["cuda", "build", "--arch", "sm_87", "--show-resources"], monkeypatch)
    out = capsys.readouterr().out
    assert code == 0
    for name in ("letterbox", "paste", "crt_paste_masks", "sm_87"):
        assert name in out
    assert any(p.suffix == ".cubin" for p in kernel_cache.iterdir())
    # second run: everything comes from the cache
    assert run_cli(["cuda", "build", "--arch", "87"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "hit" in out and "built" not in out


def test_build_run_directly(kernel_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _nvrtc_or_skip()
    from crystal_rt.cli import cuda as cli_cuda

    ns = argparse.Namespace(
        cuda_command="build", arch="sm_75", kernel=["paste"], force=True, show_resources=False
    )
    assert cli_cuda.run(ns) == 0
    assert "paste" in capsys.readouterr().out


def test_bad_arch_and_kernel(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["cuda", "build", "--arch", "kepler"], monkeypatch) == 1
    assert "not a CUDA architecture" in capsys.readouterr().err
    assert run_cli(["cuda", "build", "--arch", "sm_87", "--kernel", "nope"], monkeypatch) == 1
    assert "nope.cu" in capsys.readouterr().err


def test_info(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kernel_cache: Path
) -> None:
    assert run_cli(["cuda", "info"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "NVRTC" in out and "cache" in out and "device" in out
    assert "crystal-rt" in out  # the cache folder


def test_import_does_not_import_cuda() -> None:
    code = (
        "import sys\n"
        "import crystal_rt.cuda.build, crystal_rt.cuda.preprocessor\n"
        "import crystal_rt.cuda.memory, crystal_rt.cli.cuda\n"
        "bad = sorted(m for m in sys.modules if m == 'cuda' or m.startswith('cuda.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_cuda_python_is_one_sentence() -> None:
    """With cuda-python absent, build functions raise MissingDependency naming the gpu extra."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cuda' or name.startswith('cuda.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from crystal_rt.cuda import build\n"
        "from crystal_rt.errors import MissingDependency\n"
        "assert build.kernel_names()\n"
        "try:\n"
        "    build.nvrtc_version()\n"
        "except MissingDependency as exc:\n"
        "    assert 'crystal-rt[gpu]' in str(exc) and 'cuda-python' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no MissingDependency')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_as_stream_accepts_foreign_streams() -> None:
    from crystal_rt.cuda.driver import as_stream

    class Obj:
        def __init__(self, **kw: object) -> None:
            self.__dict__.update(kw)

    class Proto:
        def __cuda_stream__(self) -> tuple[int, int]:
            return (0, 77)

    assert as_stream(None) == 0
    assert as_stream(1234) == 1234
    assert as_stream(Obj(handle=11)) == 11  # PyCUDA
    assert as_stream(Obj(ptr=12)) == 12  # CuPy
    assert as_stream(Obj(cuda_stream=13)) == 13  # torch
    assert as_stream(Proto()) == 77  # __cuda_stream__ protocol (cuda.core)
    with pytest.raises(TypeError):
        as_stream("stream")
    driver = pytest.importorskip("cuda.bindings.driver")
    assert as_stream(driver.CUstream(99)) == 99


def test_paste_layout_matches_paste_mask() -> None:
    from crystal_rt.cuda.launches import paste_layout
    from crystal_rt.runtime.postprocess import paste_mask

    rng = np.random.default_rng(0)
    boxes = [
        (float(a), float(b), float(a + c), float(b + d)) for a, b, c, d in rng.uniform(-50, 300, (50, 4))
    ]
    boxes = [(x1, y1, max(x2, x1 + 0.01), max(y2, y1 + 0.01)) for x1, y1, x2, y2 in boxes]
    layout = paste_layout(boxes, 200, 240)
    offset = 0
    for i, box in enumerate(boxes):
        want = paste_mask(np.zeros((28, 28), np.float32), box, 200, 240)
        _, _, _, _, _, x0, y0, cw, ch = (int(v) for v in layout.meta[i])
        assert (ch, cw) == want.crop.shape
        if cw:
            assert (x0, y0) == (want.x0, want.y0)
        assert layout.offsets[i] == offset
        offset += cw * ch
    assert layout.total_bytes == offset


# ---- launch.py end to end without a GPU: the simulated GPU (crystal_rt.testing), whose driver runs
# the kernels in the CPU emulator from the very void** kernelParams array launch.py packs (so a wrong
# ctypes type or argument order shows up here) and checks every pointer and copy.


@pytest.fixture
def fake_cuda(sim_gpu, kernel_cache: Path):
    _nvrtc_or_skip()
    from crystal_rt.cuda.driver import check, ensure_context
    from crystal_rt.cuda.driver import driver as cuda_driver

    ensure_context()
    driver = cuda_driver()
    stream = check(driver.cuStreamCreate(1), "cuStreamCreate")
    yield sim_gpu, int(stream)
    driver.cuStreamDestroy(stream)


def _cpu_preprocess(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    from crystal_rt.runtime.preprocess import apply_clahe, letterbox, normalize

    return normalize(letterbox(apply_clahe(img, spec), spec.input_size)[0], spec)


@pytest.mark.parametrize(
    ("dtype", "rgb", "grid"),
    [
        (np.uint8, False, (8, 8)),
        (np.uint8, True, (4, 4)),
        (np.uint16, False, (2, 2)),
        (np.uint16, True, None),
    ],
    ids=["u8-gray-clahe", "u8-rgb-clahe", "u16-gray-clahe", "u16-rgb-noclahe"],
)
def test_gpu_preprocessor_through_fake_driver(
    fake_cuda, dtype: type, rgb: bool, grid: tuple[int, int] | None
) -> None:
    from crystal_rt.cuda.memory import DeviceBuffer, download
    from crystal_rt.cuda.preprocessor import GpuPreprocessor

    sim, stream = fake_cuda
    spec = PreprocessSpec.paper(input_size=64, clahe=grid is not None, tile_grid=grid or (8, 8))
    rng = np.random.default_rng(0)
    h, w = 45, 70
    top = 255 if dtype == np.uint8 else 65535
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 9.0) * np.cos(yy / 7.0) * 0.3 + 0.4) * top
    img = np.clip(base + rng.normal(0, top / 30, (h, w)), 0, top).astype(dtype)
    if rgb:
        img = np.stack([img, img[::-1], np.roll(img, 5, axis=1)], axis=-1)
    pre = GpuPreprocessor(spec)
    src = DeviceBuffer()
    src.upload(img, stream=stream)
    out = DeviceBuffer(3 * 64 * 64 * 4)
    channels = 3 if rgb else 1
    scale = pre(src.ptr, img.strides[0], h, w, dtype, channels, out.ptr, stream=stream)
    got = download(out.ptr, out.nbytes, stream).view(np.float32).reshape(1, 3, 64, 64)
    assert scale.scale == 64 / 70
    assert float(np.abs(got - _cpu_preprocess(img, spec)).max()) <= 1e-6
    expected = ["crt_letterbox_normalize_u8" if dtype == np.uint8 else "crt_letterbox_normalize_u16"]
    if grid is not None:
        clahe = (
            ["clahe_hist_lut_u8", "clahe_apply_u8"]
            if dtype == np.uint8
            else ["clahe_hist_lut_u16", "clahe_apply_u16"]
        )
        expected = (["rgb_to_lab_u8", *clahe, "lab_to_rgb_u8"] if rgb else clahe) + expected
    assert sim.kernels_launched() == expected
    pre.close()
    src.free()
    out.free()
    assert not sim.live_allocations(), "every device buffer is freed"


def test_gpu_preprocessor_rejects_16bit_rgb_clahe(fake_cuda) -> None:
    from crystal_rt.cuda.preprocessor import GpuPreprocessor
    from crystal_rt.errors import BackendUnavailable

    pre = GpuPreprocessor(PreprocessSpec.paper(input_size=64))
    with pytest.raises(BackendUnavailable, match="16-bit RGB"):
        pre(1, 60, 10, 10, np.uint16, 3, 2)
    pre.close()


def test_gpu_mask_paster_through_fake_driver(fake_cuda) -> None:
    from crystal_rt.cuda.memory import DeviceBuffer
    from crystal_rt.cuda.preprocessor import GpuMaskPaster
    from crystal_rt.runtime.postprocess import paste_mask

    rng = np.random.default_rng(1)
    h, w, k = 120, 160, 12
    probs = rng.random((k, 28, 28), dtype=np.float32)
    boxes = []
    for _ in range(6):
        bw, bh = float(rng.uniform(0.2, 150)), float(rng.uniform(0.2, 120))
        x1, y1 = float(rng.uniform(-40, w)), float(rng.uniform(-40, h))
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    indices = [11, 0, 5, 5, 3, 7]  # which of the K maps each box uses
    dev = DeviceBuffer()
    dev.upload(probs)
    paster = GpuMaskPaster()
    crops = paster(dev.ptr, 28, boxes, h, w, prob_indices=indices)
    assert fake_cuda[0].kernels_launched() == ["crt_paste_masks"]
    for (crop, x0, y0), box, idx in zip(crops, boxes, indices, strict=True):
        want = paste_mask(probs[idx], box, h, w)
        assert crop.shape == want.crop.shape and np.array_equal(crop, want.crop)
        if crop.size:
            assert (x0, y0) == (want.x0, want.y0)
    assert paster(dev.ptr, 28, [], h, w) == []
    paster.close()
    dev.free()
