"""Which arithmetic a machine's cv2 uses, checked against crystal-rt's references (design note 22).

Two steps, so that the first needs only numpy and OpenCV (run it on the machine to check: a Jetson,
or an aarch64 Python under qemu-user), and the second runs where crystal-rt is installed:

    python scripts/compare_opencv_arm64.py run OUT_DIR      # on the machine to check: cv2 outputs
    python scripts/compare_opencv_arm64.py check OUT_DIR    # anywhere: compare with the references

``run`` makes the same seeded inputs everywhere (smooth noise, 8/16-bit gray and RGB, odd sizes and
grids), and saves cv2's CLAHE, 16-bit/float ``INTER_LINEAR`` resizes (the letterbox and mask-paste
cases) and 8-bit resizes, tagged by ``platform.machine()``. ``check`` compares each machine's outputs
with ``clahe_reference``/``resize_reference`` in the arithmetic crystal-rt picks for it
(``crystal_rt.arith``) and with ``preprocess.resize_u8_portable`` for 8-bit, and prints the counts.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np


def _noise(rng: np.random.Generator, shape: tuple[int, ...], top: int) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (np.sin(xx / 23.0) * np.cos(yy / 17.0) * 0.35 + 0.45) * top
    if len(shape) == 3:
        base = np.stack([base, base[::-1], np.roll(base, 7, axis=1)], axis=-1)
    return np.clip(base + rng.normal(0, top / 12, shape), 0, top)


FULL = [
    (1000, 1333, 1, "uint8", (8, 8)),
    (1024, 1224, 3, "uint8", (8, 8)),
    (1000, 1333, 1, "uint16", (8, 8)),
    (517, 389, 1, "uint16", (7, 5)),
    (600, 801, 3, "uint16", (8, 8)),
    (2028, 2532, 1, "uint8", (8, 8)),
]
#: the cases of tests/data/opencv-aarch64.npz (small: a CI fixture)
SMALL = [(240, 321, 1, "uint8", (8, 8)), (301, 403, 1, "uint16", (7, 5)), (150, 203, 3, "uint16", (8, 8))]


def cases(small: bool = False) -> list[dict[str, object]]:
    rng = np.random.default_rng(2026)
    out: list[dict[str, object]] = []
    for i, (h, w, c, dtype, grid) in enumerate(SMALL if small else FULL):
        top = 255 if dtype == "uint8" else 65535
        shape = (h, w) if c == 1 else (h, w, 3)
        img = _noise(rng, shape, top).astype(dtype)
        scale = 0.77 if small else 512 / max(h, w)
        out.append(
            {
                "name": f"case{i}",
                "img": img,
                "grid": grid,
                "size": (int(w * scale + 0.5), int(h * scale + 0.5)),
            }
        )
    return out


def run(folder: Path, small: bool = False) -> None:
    import cv2

    if hasattr(cv2, "ipp"):
        cv2.ipp.setUseIPP(False)
    tag = platform.machine()
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases(small):
        img, name = case["img"], case["name"]
        assert isinstance(img, np.ndarray)
        w, h = case["size"]  # type: ignore[misc]
        np.save(folder / f"{tag}-{name}-resize.npy", cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
        if img.ndim == 2:
            clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=case["grid"]).apply(img)  # type: ignore[arg-type]
            np.save(folder / f"{tag}-{name}-clahe.npy", clahe)
    rng = np.random.default_rng(7)
    count = 12 if small else 40
    probs = rng.random((count, 30, 30), dtype=np.float32)
    largest = 90 if small else 200
    sizes = [(int(rng.integers(3, largest)), int(rng.integers(3, largest))) for _ in range(count)]
    pasted = [cv2.resize(p, s, interpolation=cv2.INTER_LINEAR) for p, s in zip(probs, sizes, strict=True)]
    np.savez(folder / f"{tag}-paste.npz", *pasted)
    (folder / f"{tag}.json").write_text(json.dumps({"machine": tag, "opencv": cv2.__version__}))
    print(f"wrote cv2 {cv2.__version__} outputs for {tag} to {folder}")


def check(folder: Path) -> int:
    import os

    from crystal_rt import arith
    from crystal_rt.runtime.preprocess import resize_u8_portable
    from crystal_rt.testing.clahe_reference import clahe_reference
    from crystal_rt.testing.resize_reference import resize_reference

    failures = 0
    for meta in sorted(folder.glob("*.json")):
        tag = json.loads(meta.read_text())["machine"]
        os.environ[arith.ENV] = "aarch64" if tag in arith.AARCH64_MACHINES else "x86"
        fma = arith.opencv_fma()
        print(f"== {tag} (cv2 {json.loads(meta.read_text())['opencv']}): {arith.flavour_name(fma)}")
        for case in cases():
            img, name = case["img"], case["name"]
            assert isinstance(img, np.ndarray)
            resized = np.load(folder / f"{tag}-{name}-resize.npy")
            h, w = resized.shape[:2]
            if img.dtype == np.uint8:
                differ = int(np.count_nonzero(resize_u8_portable(img, w, h) != resized))
                hal = (
                    ""
                    if arith.cv2_u8_resize_is_portable()
                    else " (a HAL here: crystal-rt computes the portable code)"
                )
                print(
                    f"  {name} uint8 resize vs OpenCV's portable code: {differ} of {resized.size} differ{hal}"
                )
                failures += differ if arith.cv2_u8_resize_is_portable() else 0
            else:
                differ = int(np.count_nonzero(resize_reference(img, w, h, fma=fma) != resized))
                print(f"  {name} uint16 resize: {differ} differ")
                failures += differ
            path = folder / f"{tag}-{name}-clahe.npy"
            if path.exists():
                differ = int(
                    np.count_nonzero(clahe_reference(img, 2.0, case["grid"], fma=fma) != np.load(path))
                )  # type: ignore[arg-type]
                print(f"  {name} {img.dtype} CLAHE: {differ} differ")
                failures += differ
        rng = np.random.default_rng(7)
        probs = rng.random((40, 30, 30), dtype=np.float32)
        pasted = np.load(folder / f"{tag}-paste.npz")
        differ = sum(
            int(np.count_nonzero(resize_reference(p, a.shape[1], a.shape[0], fma=fma) != a))
            for p, a in zip(
                probs,
                (pasted[k] for k in sorted(pasted.files, key=lambda s: int(s.split("_")[1]))),
                strict=True,
            )
        )
        print(f"  float32 (mask paste) resize: {differ} differ")
        failures += differ
    return 1 if failures else 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--small"]
    if len(args) != 2 or args[0] not in ("run", "check"):
        raise SystemExit(__doc__)
    if args[0] == "run":
        run(Path(args[1]), small="--small" in sys.argv)
    else:
        raise SystemExit(check(Path(args[1])))
