"""kernels/letterbox.cu through the CPU emulator: equals normalize(letterbox(img)) on the CPU.

The launch comes from :func:`crystal_rt.cuda.launches.letterbox_launch` (sizes, gains, biases), so
the host arithmetic of the GPU path is tested too; grids are capped for emulator speed (the
kernel strides over the canvas).

Reference: the CPU letterbox, whose resize is OpenCV's own code with Intel IPP switched off
(``preprocess.resize_linear``): what cv2 computes on ARM/Jetson. cv2's x86 default would send
16-bit resizes to IPP, which rounds some pixels a step or two differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_rt.cuda.launches import letterbox_launch
from crystal_rt.runtime.preprocess import normalize, preprocess, resize
from crystal_rt.spec import Intensity, Normalize, PreprocessSpec, Resize
from crystal_rt.testing.emulator.kernels import EmulatedModule

from .harness import emulated_module_or_skip

REPO = Path(__file__).resolve().parents[2]
LETTERBOX_CU = REPO / "src" / "crystal_rt" / "cuda" / "kernels" / "letterbox.cu"
TOL = 1e-6

EMU_BLOCK = (16, 4, 1)
EMU_MAX_GRID = (4, 4)


class EmuLetterbox:
    def __init__(self, module: EmulatedModule) -> None:
        self.module = module

    def __call__(
        self, img: np.ndarray, spec: PreprocessSpec, pad_cols: int = 5, fma: bool = False
    ) -> tuple[np.ndarray, float]:
        h, w = img.shape[:2]
        channels = 1 if img.ndim == 2 else 3
        # a pitched source (extra columns of garbage) exercises the pitch argument
        src = np.full((h, w + pad_cols, *img.shape[2:]), 123, img.dtype)
        src[:, :w] = img
        out = np.full((1, 3, *spec.input_hw), np.nan, np.float32)
        launch, scale = letterbox_launch(
            src.ctypes.data,
            src.strides[0],
            h,
            w,
            channels,
            img.dtype,
            spec,
            out.ctypes.data,
            block=EMU_BLOCK,
            max_grid=EMU_MAX_GRID,
            fma=fma,
        )
        self.module.run(launch.kernel, launch.grid, launch.block, launch.args, launch.argtypes)
        return out, scale


@pytest.fixture(scope="session")
def emu() -> EmuLetterbox:
    return EmuLetterbox(emulated_module_or_skip("letterbox"))


def reference(img: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    canvas, mapping = resize(img, spec.resize)
    return normalize(canvas, spec), mapping.scale


def random_image(rng: np.random.Generator, h: int, w: int, dtype: type, rgb: bool) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    shape = (h, w, 3) if rgb else (h, w)
    img = rng.integers(0, top + 1, size=shape, dtype=np.int64)
    # add smooth structure so that interpolation weights matter (pure noise hides rounding bugs less)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx * 7 + yy * 3) % (top + 1)).astype(np.int64)
    if rgb:
        ramp = ramp[..., None]
    return np.where(rng.random(shape) < 0.5, img, ramp).astype(dtype)


def check(emu: EmuLetterbox, img: np.ndarray, spec: PreprocessSpec) -> None:
    got, mapping = emu(img, spec)
    want, want_scale = reference(img, spec)
    assert mapping.scale == want_scale
    assert not np.isnan(got).any(), "every output element must be written"
    diff = float(np.abs(got - want).max())
    assert diff <= TOL, f"{img.shape} {img.dtype}: max |gpu - cpu| = {diff}"


# (h, w, S): 1x1, tall, wide, up- and downscale, exact 2x downscale, same size, odd sizes
SHAPES = [
    (1, 1, 32),
    (1, 7, 32),
    (9, 1, 32),
    (3, 5, 64),
    (31, 32, 32),
    (32, 32, 32),
    (64, 64, 32),
    (64, 40, 32),
    (128, 30, 64),
    (17, 250, 64),
    (250, 17, 64),
    (100, 75, 96),
    (193, 97, 96),
    (77, 66, 128),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize(("h", "w", "size"), SHAPES)
def test_letterbox_matches_cpu(emu: EmuLetterbox, h: int, w: int, size: int, dtype: type, rgb: bool) -> None:
    rng = np.random.default_rng(h * 1000 + w + size + (7 if rgb else 0))
    check(emu, random_image(rng, h, w, dtype, rgb), PreprocessSpec.paper(input_size=size))


def test_letterbox_random_sizes(emu: EmuLetterbox) -> None:
    rng = np.random.default_rng(2024)
    for i in range(40):
        size = int(rng.choice([32, 64, 96]))
        h, w = (int(v) for v in rng.integers(1, 3 * size, 2))
        dtype = np.uint16 if i % 2 else np.uint8
        check(emu, random_image(rng, h, w, dtype, bool(i % 3 == 0)), PreprocessSpec.paper(input_size=size))


def test_letterbox_exact_2x_uses_area_path(emu: EmuLetterbox) -> None:
    """cv2 switches INTER_LINEAR to its 2x2-mean "area fast" code for exact 2x: (a+b+c+d+2)>>2."""
    rng = np.random.default_rng(5)
    spec = PreprocessSpec.paper(input_size=32)
    for dtype in (np.uint8, np.uint16):
        for h, w in ((64, 64), (64, 18), (22, 64)):
            img = random_image(rng, h, w, dtype, False)
            got, _ = emu(img, spec)
            a = img.astype(np.int64)
            area = (a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2] + 2) >> 2
            top = 255.0 if dtype == np.uint8 else 65535.0
            gain = np.float32(1.0 / (top * spec.std[0]))
            bias = np.float32(-spec.mean[0] / spec.std[0])
            want = area.astype(np.float32) * gain + bias
            assert np.abs(got[0, 0, : h // 2, : w // 2] - want).max() <= TOL
            check(emu, img, spec)


def test_letterbox_custom_mean_std(emu: EmuLetterbox) -> None:
    spec = PreprocessSpec.paper(input_size=64, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    rng = np.random.default_rng(9)
    check(emu, random_image(rng, 45, 70, np.uint16, True), spec)
    check(emu, random_image(rng, 45, 70, np.uint8, False), spec)


def test_letterbox_real_images(emu: EmuLetterbox, real_images: list[Path]) -> None:
    from crystal_rt.io.decode import read_image

    spec = PreprocessSpec()  # S = 512, as the engines use
    for path in real_images:
        img = read_image(path)
        check(emu, img, spec)
        # the 16-bit path on the same content
        check(emu, img.astype(np.uint16) * 257, spec)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize(
    ("h", "w", "out_h", "out_w"), [(50, 70, 32, 64), (70, 50, 96, 32), (64, 96, 32, 64), (9, 3, 64, 32)]
)
def test_rectangular_letterbox_and_stretch(
    emu: EmuLetterbox, h: int, w: int, out_h: int, out_w: int, dtype: type
) -> None:
    """A non-square engine input: letterbox into H x W, and a stretch to exactly H x W (the recipe's
    resize step), each equal to the CPU's preprocess; the map back is the CPU's."""
    rng = np.random.default_rng(h + w + out_h)
    for mode in ("letterbox", "stretch"):
        # the kernel's own 16-bit path: a recipe that keeps 16-bit images 16-bit (with the default,
        # trained on 8-bit images, the pipeline maps them to 8 bits on the host before the upload)
        spec = PreprocessSpec(
            (Resize(mode, out_h, out_w), Intensity("bit_depth"), Normalize()), training_bit_depth=16
        )
        for rgb in (False, True):
            img = random_image(rng, h, w, dtype, rgb)
            got, mapping = emu(img, spec)
            pre = preprocess(img, spec)
            assert mapping == pre.mapping
            assert not np.isnan(got).any()
            assert float(np.abs(got - pre.tensor).max()) <= TOL, (mode, rgb)


def test_recipes_the_kernel_does_not_compute_are_refused() -> None:
    from crystal_rt.errors import BackendUnavailable

    img = np.zeros((10, 10), np.uint8)
    with pytest.raises(BackendUnavailable, match="CPU"):
        letterbox_launch(img.ctypes.data, 10, 10, 10, 1, np.uint8, PreprocessSpec.chimp(), 0)
