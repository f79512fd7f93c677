"""kernels/clahe.cu through the CPU emulator: bit-exact with cv2.createCLAHE(...).apply.

The kernels are compiled once per session with g++ (tests/cuda_emu/cuda_emu.hpp) and launched
with the geometry of :class:`crystal_rt.cuda.clahe_plan.ClahePlan`, so the plan is tested too.
Emulated blocks are small (32 threads) for speed; one case uses the GPU launch shape.
"""

from __future__ import annotations

import os
import platform
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from crystal_rt.cuda.clahe_plan import APPLY_ARGTYPES, HIST_ARGTYPES, LAB_ARGTYPES, ClahePlan, pixel_launch
from crystal_rt.runtime.preprocess import apply_clahe
from crystal_rt.spec import PreprocessSpec
from crystal_rt.testing.clahe_reference import clahe_reference
from crystal_rt.testing.emulator.kernels import EmulatedModule

from .harness import build_executable, emulated_module_or_skip

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / "src" / "crystal_rt" / "cuda" / "kernels"
CLAHE_CU = KERNELS / "clahe.cu"
REAL_DIR = REPO / "tests" / "data" / "real"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}

# Small launch shapes for the emulator (one OS thread per CUDA thread).
EMU_SHAPE = {"hist_threads": 32, "apply_block": (8, 4), "max_apply_blocks": 8, "max_splits": 2}


class EmuClahe:
    """Runs clahe.cu's kernels in the emulator with a ClahePlan's arguments (the generic launch entry
    the simulated GPU uses: kernelParams packed from HIST/APPLY/LAB_ARGTYPES)."""

    def __init__(self, module: EmulatedModule) -> None:
        self.module = module

    def __call__(
        self,
        img: np.ndarray,
        clip: float,
        grid: tuple[int, int],
        shift: int = 0,
        *,
        shape: dict[str, object] | None = None,
        pad_cols: int = 3,
        in_place: bool = False,
        fma: bool = False,
    ) -> np.ndarray:
        kw: dict[str, object] = dict(EMU_SHAPE if shape is None else shape)
        plan = ClahePlan.for_image(img.shape[0], img.shape[1], img.dtype, clip, grid, shift, fma=fma, **kw)  # type: ignore[arg-type]
        h, w = img.shape
        # pitched buffers (extra columns) to exercise the pitch arguments
        src = np.zeros((h, w + pad_cols), img.dtype)
        src[:, :w] = img
        dst = src if in_place else np.full((h, w + pad_cols + 1), 77, img.dtype)
        scratch = np.zeros(plan.scratch_bytes // 4, np.int32)
        lut = np.zeros(plan.lut_bytes // img.dtype.itemsize, img.dtype)
        args = plan.hist_args(src.ctypes.data, src.strides[0], scratch.ctypes.data, lut.ctypes.data)
        self.module.run(
            plan.hist_kernel, plan.hist_grid, plan.hist_block, args, HIST_ARGTYPES, plan.hist_dynamic_smem
        )
        assert not scratch.any(), "the histogram kernel must leave its scratch zeroed"
        args = plan.apply_args(
            src.ctypes.data, src.strides[0], dst.ctypes.data, dst.strides[0], lut.ctypes.data
        )
        self.module.run(plan.apply_kernel, plan.apply_grid, plan.apply_block, args, APPLY_ARGTYPES)
        return np.ascontiguousarray(dst[:, :w])

    def rgb_to_lab(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L, ab) planes; ab = a | b << 8."""
        h, w = rgb.shape[:2]
        src = np.zeros((h, w + 1, 3), np.uint8)
        src[:, :w] = rgb
        lum = np.zeros((h, w + 2), np.uint8)
        ab = np.zeros((h, w + 3), np.uint16)
        grid, block = pixel_launch(h, w, (16, 4), max_blocks=16)
        args = (
            src.ctypes.data,
            src.strides[0],
            lum.ctypes.data,
            lum.strides[0],
            ab.ctypes.data,
            ab.strides[0],
            w,
            h,
        )
        self.module.run("rgb_to_lab_u8", grid, block, args, LAB_ARGTYPES)
        return np.ascontiguousarray(lum[:, :w]), np.ascontiguousarray(ab[:, :w])

    def lab_to_rgb(self, lum: np.ndarray, ab: np.ndarray) -> np.ndarray:
        h, w = lum.shape
        out = np.zeros((h, w + 2, 3), np.uint8)
        grid, block = pixel_launch(h, w, (16, 4), max_blocks=16)
        args = (
            lum.ctypes.data,
            lum.strides[0],
            ab.ctypes.data,
            ab.strides[0],
            out.ctypes.data,
            out.strides[0],
            w,
            h,
        )
        self.module.run("lab_to_rgb_u8", grid, block, args, LAB_ARGTYPES)
        return np.ascontiguousarray(out[:, :w])

    def colour_clahe(self, rgb: np.ndarray, clip: float, grid: tuple[int, int]) -> np.ndarray:
        lum, ab = self.rgb_to_lab(rgb)
        return self.lab_to_rgb(self(lum, clip, grid), ab)


@pytest.fixture(scope="session")
def emu() -> EmuClahe:
    return EmuClahe(emulated_module_or_skip("clahe"))


# ---- numpy reference of clahe-spec.md (needed for bitShift > 0, which cv2's Python API lacks) ----------


def cv2_clahe(img: np.ndarray, clip: float, grid: tuple[int, int]) -> np.ndarray:
    out: np.ndarray = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(img)
    return out


def _assert_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        raise AssertionError(
            f"{what}: {int((diff > 0).sum())} of {diff.size} pixels differ, max {int(diff.max())}"
        )


# ---- random, constant and low-entropy images --------------------------------------------------------------

SIZES = [(1, 1), (1, 9), (7, 3), (33, 17), (64, 64), (100, 73), (257, 129), (512, 512)]
GRIDS = [(1, 1), (2, 3), (8, 8), (5, 2), (16, 16), (3, 16)]
CLIPS = [0.0, 0.5, 2.0, 40.0]


def _image(kind: str, h: int, w: int, dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    if kind == "random":
        return rng.integers(0, top + 1, (h, w), dtype=dtype)
    if kind == "constant":
        return np.full((h, w), rng.integers(0, top + 1), dtype)
    if kind == "lowentropy":
        return rng.choice(np.array([3, 4, top // 2, top - 9], dtype), size=(h, w))
    # smooth gradient + noise: a structured image
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 7.0) + np.cos(yy / 11.0) + 2) * top / 4
    return np.clip(base + rng.normal(0, top / 50, (h, w)), 0, top).astype(dtype)


def _cases() -> list[tuple[tuple[int, int], tuple[int, int], float, str, type]]:
    cases = []
    kinds = ["random", "constant", "lowentropy", "structured"]
    i = 0
    for size in SIZES:
        for grid in GRIDS:
            for dtype in (np.uint8, np.uint16):
                clip = CLIPS[i % len(CLIPS)]
                kind = kinds[(i // len(CLIPS)) % len(kinds)]
                i += 1
                if size == (512, 512) and (dtype is np.uint16 or grid not in {(8, 8), (3, 16)}):
                    continue  # the emulator is slow at this size; two cases are enough
                cases.append((size, grid, clip, kind, dtype))
    return cases


@pytest.mark.parametrize(
    ("size", "grid", "clip", "kind", "dtype"),
    _cases(),
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else getattr(v, "__name__", str(v)),
)
def test_matches_cv2(
    emu: EmuClahe, size: tuple[int, int], grid: tuple[int, int], clip: float, kind: str, dtype: type
) -> None:
    img = _image(kind, *size, dtype, seed=zlib.crc32(repr((size, grid, clip, kind)).encode()))
    want = cv2_clahe(img, clip, grid)
    _assert_equal(emu(img, clip, grid), want, "emulated kernel vs cv2")


@pytest.mark.parametrize("clip", [0.0, 2.0, 40.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_reference_matches_cv2(dtype: type, clip: float) -> None:
    """The numpy reference used for bitShift > 0 is itself exact at bitShift 0."""
    for size, grid in [((33, 17), (8, 8)), ((100, 73), (3, 5)), ((64, 64), (4, 4)), ((1, 9), (8, 2))]:
        img = _image("structured", *size, dtype, seed=7)
        _assert_equal(
            clahe_reference(img, clip, grid), cv2_clahe(img, clip, grid), f"reference {size} {grid}"
        )


@pytest.mark.parametrize("shift", [1, 4, 7])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    ("size", "grid", "clip"), [((100, 73), (4, 3), 2.0), ((64, 64), (8, 8), 0.0), ((7, 3), (8, 8), 40.0)]
)
def test_bit_shift(
    emu: EmuClahe, size: tuple[int, int], grid: tuple[int, int], clip: float, dtype: type, shift: int
) -> None:
    img = _image("structured", *size, dtype, seed=shift)
    _assert_equal(emu(img, clip, grid, shift), clahe_reference(img, clip, grid, shift), "kernel vs reference")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gpu_launch_shape(emu: EmuClahe, dtype: type) -> None:
    """The launch shape a GPU gets (256/1024-thread blocks, several splits, sub-histograms) + in place."""
    img = _image("structured", 200, 333, dtype, seed=3)
    want = cv2_clahe(img, 2.0, (8, 8))
    plan = ClahePlan.for_image(200, 333, dtype, 2.0, (8, 8))
    shape = {"max_apply_blocks": 4}
    assert plan.splits >= 1
    _assert_equal(emu(img.copy(), 2.0, (8, 8), shape=shape, in_place=True), want, "GPU shape, in place")


def test_plan_geometry() -> None:
    plan = ClahePlan.for_image(1000, 1333, np.uint8, 2.0, (8, 8))
    assert (plan.tile_w, plan.tile_h, plan.padded) == (167, 126, True)  # the padding quirk
    assert plan.clip_limit == int(2.0 * 167 * 126 / 256)
    assert ClahePlan.for_image(10, 10, np.uint8, 0.0, (2, 2)).clip_limit == 0
    assert ClahePlan.for_image(10, 10, np.uint8, 0.01, (2, 2)).clip_limit == 1
    assert ClahePlan.for_image(64, 64, np.uint8, 1e9, (1, 1)).clip_limit == 1  # cv2's int overflow


def test_huge_clip_overflows_like_cv2(emu: EmuClahe) -> None:
    img = _image("lowentropy", 64, 64, np.uint8, seed=1)
    _assert_equal(emu(img, 1e9, (1, 1)), cv2_clahe(img, 1e9, (1, 1)), "clip 1e9")
    p16 = ClahePlan.for_image(1080, 1920, np.uint16, 2.0, (8, 8))
    assert p16.sub_hists == 0 and p16.hist_dynamic_smem == 0 and p16.scratch_bytes == (64 * 65536 + 64) * 4
    assert ClahePlan.for_image(1080, 1920, np.uint16, 2.0, (8, 8), bit_shift=4).sub_hists > 0
    with pytest.raises(ValueError):
        ClahePlan.for_image(4, 4, np.float32, 2.0, (8, 8))


# ---- real images -------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_gray8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        pytest.skip(f"cv2 cannot read {path.name}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return np.ascontiguousarray(img.astype(np.uint8))


def _check_real(emu: EmuClahe, path: Path) -> None:
    gray = _read_gray8(path)
    _assert_equal(emu(gray, 2.0, (8, 8)), cv2_clahe(gray, 2.0, (8, 8)), f"{path.name} 8-bit")
    g16 = gray.astype(np.uint16) * np.uint16(257)
    _assert_equal(emu(g16, 2.0, (8, 8)), cv2_clahe(g16, 2.0, (8, 8)), f"{path.name} 16-bit")


@pytest.mark.parametrize("name", [p.name for p in _image_files(REAL_DIR)] or ["<none>"])
def test_real_images(emu: EmuClahe, real_images: list[Path], name: str) -> None:
    _check_real(emu, REAL_DIR / name)


_EXTRA = os.environ.get("CRYSTAL_RT_TEST_IMAGES")


@pytest.mark.parametrize("name", [p.name for p in _image_files(Path(_EXTRA))] if _EXTRA else ["<unset>"])
def test_extra_images(emu: EmuClahe, name: str) -> None:
    if not _EXTRA:
        pytest.skip("set CRYSTAL_RT_TEST_IMAGES to a folder of images to test them too")
    _check_real(emu, Path(_EXTRA) / name)


# ---- the FMA flavour (aarch64 OpenCV, Jetson): clahe-spec 1.9 ---------------------------------------------

FMA_CASES = [
    ((1000, 1333), np.uint16, 2.0, (8, 8)),
    ((480, 641), np.uint8, 3.0, (8, 8)),
    ((517, 389), np.uint16, 1.5, (7, 5)),
    ((96, 128), np.uint8, 2.0, (6, 4)),
    ((1, 9), np.uint8, 2.0, (8, 8)),
]


def _smooth_noise(shape: tuple[int, int], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (np.sin(xx / 23.0) * np.cos(yy / 17.0) * 0.35 + 0.45) * top
    return np.clip(base + rng.normal(0, top / 12, shape), 0, top).astype(dtype)


@pytest.mark.parametrize(("shape", "dtype", "clip", "grid"), FMA_CASES)
def test_fma_flavour_equals_the_spec(emu: EmuClahe, shape, dtype, clip: float, grid) -> None:
    """fma=1 equals the spec's aarch64 formula; fma=0 equals cv2 here (x86); and the two differ where
    the spec says they do (16-bit at 1333x1000: ~0.03-0.08 % of pixels)."""
    img = _smooth_noise(shape, dtype, seed=shape[0])
    fused = emu(img, clip, grid, fma=True, shape={})
    _assert_equal(fused, clahe_reference(img, clip, grid, fma=True), f"fma {shape}")
    plain = emu(img, clip, grid, fma=False, shape={})
    _assert_equal(plain, cv2_clahe(img, clip, grid), f"plain {shape}")
    if shape == (1000, 1333):
        differ = float(np.mean(fused != plain))
        assert 0 < differ < 2e-3, differ


def test_results_do_not_depend_on_contraction(emu: EmuClahe) -> None:
    """The kernels round every float step with intrinsics: built with g++ -ffp-contract=fast -mfma
    (contraction on, FMA instructions available) they give the very same pixels in both flavours."""
    if platform.machine() != "x86_64" or "fma" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("needs an x86-64 CPU with FMA instructions")
    contracted = EmuClahe(emulated_module_or_skip("clahe", ("-ffp-contract=fast", "-mfma")))
    for shape, dtype, clip, grid in FMA_CASES[:3]:
        img = _smooth_noise(shape, dtype, seed=7)
        for fma in (False, True):
            _assert_equal(
                contracted(img, clip, grid, fma=fma, shape={}),
                emu(img, clip, grid, fma=fma, shape={}),
                str(fma),
            )


def test_flavour_follows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from crystal_rt import arith
    from crystal_rt.testing.clahe_reference import opencv_clahe_flavour

    monkeypatch.delenv(arith.ENV, raising=False)
    monkeypatch.setattr(arith.platform, "machine", lambda: "aarch64")
    assert arith.opencv_fma() and not arith.cv2_u8_resize_is_portable()
    monkeypatch.setattr(arith.platform, "machine", lambda: "x86_64")
    assert not arith.opencv_fma() and arith.cv2_u8_resize_is_portable()
    monkeypatch.setenv(arith.ENV, "aarch64")
    assert arith.opencv_fma()
    monkeypatch.undo()
    # the installed cv2 is this machine's OpenCV: its flavour is the machine's
    expected = "fma" if platform.machine() in arith.AARCH64_MACHINES else "plain"
    assert opencv_clahe_flavour() == expected


# ---- colour path: RGB <-> LAB ------------------------------------------------------------------------------


def _all_colours() -> np.ndarray:
    v = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def test_rgb_to_lab_all_colours(emu: EmuClahe) -> None:
    img = _all_colours()
    want = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lum, ab = emu.rgb_to_lab(img)
    _assert_equal(lum, want[..., 0], "L")
    _assert_equal((ab & 255).astype(np.uint8), want[..., 1], "a")
    _assert_equal((ab >> 8).astype(np.uint8), want[..., 2], "b")


def test_lab_to_rgb_all_triples(emu: EmuClahe) -> None:
    lab = _all_colours()
    want = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    ab = lab[..., 1].astype(np.uint16) | (lab[..., 2].astype(np.uint16) << 8)
    _assert_equal(emu.lab_to_rgb(np.ascontiguousarray(lab[..., 0]), ab), want, "RGB")


def _read_rgb8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 3-channel BGR even for gray files
    if img is None:
        pytest.skip(f"cv2 cannot read {path.name}")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("name", [p.name for p in _image_files(REAL_DIR)] or ["<none>"])
def test_colour_real_images(emu: EmuClahe, real_images: list[Path], name: str) -> None:
    rgb = _read_rgb8(REAL_DIR / name)
    spec = PreprocessSpec()
    want = apply_clahe(rgb, spec)
    _assert_equal(emu.colour_clahe(rgb, spec.clahe.clip_limit, spec.clahe.tile_grid), want, f"{name} RGB")


def test_colour_random(emu: EmuClahe) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    spec = PreprocessSpec.paper(clip_limit=3.0, tile_grid=(4, 3))
    _assert_equal(emu.colour_clahe(rgb, 3.0, (4, 3)), apply_clahe(rgb, spec), "random RGB")


# ---- ThreadSanitizer -------------------------------------------------------------------------------------

_TSAN_MAIN = """
#include <cstdio>
#include <vector>
int main() {
    const int w = 45, h = 37, tx = 4, ty = 3, tw = 12, th = 13, hs = 256, clip = 1;
    std::vector<uint8_t> src(w * h), dst(w * h), lut(tx * ty * hs);
    for (int i = 0; i < w * h; ++i) src[i] = (uint8_t)((i * 37) ^ (i >> 3));
    std::vector<int> scratch(tx * ty * hs + tx * ty, 0);
    emu::launch(dim3(tx * ty, 2), dim3(64), 2 * hs * 4, clahe_hist_lut_u8, src.data(), (long long)w, w, h, tx,
                tw, th, 0, hs, clip, 255.0f / (tw * th), 2, scratch.data(), lut.data());
    emu::launch(dim3(2, 2), dim3(16, 4), 0, clahe_apply_u8, src.data(), (long long)w, dst.data(),
                (long long)w, w, h, tx, ty, 0, hs, 1.0f / tw, 1.0f / th, (const uint8_t*)lut.data(), 0);
    unsigned long long s = 0;
    for (uint8_t v : dst) s += v;
    std::printf("checksum %llu\\n", s);
    return 0;
}
"""

_PLANTED = """
#include <cstdio>
__global__ void block_sum(const int* in, int* out, int sync) {
    __shared__ int buf[64];
    buf[threadIdx.x] = in[threadIdx.x];
    if (sync) __syncthreads();   // the planted bug: sync == 0 skips it
    if (threadIdx.x == 0) { int s = 0; for (int i = 0; i < 64; ++i) s += buf[i]; *out = s; }
}
int main(int argc, char**) {
    int in[64], out = 0;
    for (int i = 0; i < 64; ++i) in[i] = i;
    emu::launch(dim3(1), dim3(64), 0, block_sum, (const int*)in, &out, argc > 1 ? 0 : 1);
    std::printf("sum %d\\n", out);
    return 0;
}
"""


def _run_tsan(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66 report_signal_unsafe=0")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow
def test_clahe_under_tsan() -> None:
    exe = build_executable([CLAHE_CU], _TSAN_MAIN, "clahe-tsan", tsan=True)
    proc = _run_tsan(exe)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0 and "checksum" in proc.stdout


@pytest.mark.slow
def test_emulator_catches_missing_syncthreads(tmp_path: Path) -> None:
    kernel = tmp_path / "planted.cu"
    kernel.write_text("// empty: the kernel is in the main file\n")
    exe = build_executable([kernel], _PLANTED, "planted-tsan", tsan=True)
    good = _run_tsan(exe)
    assert good.returncode == 0 and "sum 2016" in good.stdout and "ThreadSanitizer" not in good.stderr
    bad = _run_tsan(exe, "--no-sync")
    assert "WARNING: ThreadSanitizer: data race" in bad.stderr, bad.stderr[-2000:]
