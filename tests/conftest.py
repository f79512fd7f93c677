"""Shared fixtures: a tiny random Mask R-CNN exported once per session, the real drop images.

Markers: ``gpu`` (needs an NVIDIA GPU + driver), ``trt`` (needs TensorRT) and ``slow`` (set
CRYSTAL_RT_SLOW=1) are skipped automatically where they cannot run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from crystal_rt.testing import SimulatedGpu

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO / "tests" / "data" / "real"
EMU_CACHE = Path.home() / ".cache" / "crystal-rt" / "emu"

TINY_ARCH = "maskrcnn_resnet18_fpn"
TINY_SIZE = 256
TINY_K = 20
TINY_OPTIONS = {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU and driver")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (pip install tensorrt, or JetPack)")
    skip_slow = pytest.mark.skip(reason="slow: set CRYSTAL_RT_SLOW=1 to run")
    has_gpu = _has_gpu()
    from crystal_rt.runtime.tensorrt.modules import tensorrt_installed

    has_trt = tensorrt_installed()
    slow = os.environ.get("CRYSTAL_RT_SLOW") == "1"
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "slow" in item.keywords and not slow:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kernel and engine caches in a session folder (never the user's); the emulator's g++ builds,
    which only depend on the sources, stay in the user cache between runs."""
    root = tmp_path_factory.mktemp("crystal-rt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTAL_RT_EMU_CACHE", os.environ.get("CRYSTAL_RT_EMU_CACHE") or str(EMU_CACHE))
        mp.setenv("CRYSTAL_RT_CACHE", str(root))
        yield


def simulated_gpu_or_skip() -> None:
    """Skip where the simulated GPU cannot run (no cuda-python/NVRTC, no g++)."""
    from crystal_rt.testing import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def sim_gpu() -> Iterator[SimulatedGpu]:
    """The simulated GPU for one test (crystal_rt.testing.simulated_gpu)."""
    simulated_gpu_or_skip()
    from crystal_rt.testing import simulated_gpu

    with simulated_gpu() as gpu:
        yield gpu


@pytest.fixture(scope="session")
def demo_trt_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo model built as a (simulated) TensorRT plan: its engine folder."""
    simulated_gpu_or_skip()
    from crystal_rt.assets import demo_model
    from crystal_rt.build.engine import build_engine
    from crystal_rt.testing import simulated_gpu

    out = tmp_path_factory.mktemp("demo-trt")
    with simulated_gpu():
        build_engine(demo_model(), out, backend="tensorrt")
    return out


@pytest.fixture(scope="session")
def demo_ort_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo model built as an ONNX Runtime engine: its engine folder."""
    from crystal_rt.assets import demo_model
    from crystal_rt.build.engine import build_engine

    out = tmp_path_factory.mktemp("demo-ort")
    build_engine(demo_model(), out, backend="onnxruntime")
    return out


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """The three real drop images in tests/data/real (see its README.md for their source and licence)."""
    images = sorted(REAL_DIR.glob("*.jpg")) if REAL_DIR.is_dir() else []
    if not images:
        pytest.skip(f"real drop images not found in {REAL_DIR} (they ship with the repository)")
    return images


@dataclass
class TinyModel:
    checkpoint: Path
    onnx: Path
    engine_dir: Path
    export_result: object
    arch: str = TINY_ARCH
    size: int = TINY_SIZE
    k: int = TINY_K
    options: dict[str, int] = field(default_factory=lambda: dict(TINY_OPTIONS))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A seeded random maskrcnn_resnet18_fpn (2 classes, S=256, K=20): checkpoint, core ONNX, engine."""
    torch = pytest.importorskip("torch")
    from crystal_rt.build.engine import build_engine
    from crystal_rt.export.onnx_export import export_core_onnx
    from crystal_rt.models.maskrcnn import build_maskrcnn, load_checkpoint, save_checkpoint
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    pre = PreprocessSpec.paper(input_size=TINY_SIZE)
    spec = ModelSpec(arch=TINY_ARCH, num_classes=2, max_detections=TINY_K)
    model = build_maskrcnn(TINY_ARCH, 2, preprocess=pre, max_detections=TINY_K, **TINY_OPTIONS)
    checkpoint = save_checkpoint(root / "tiny.pt", model, spec, pre, model_kwargs=TINY_OPTIONS)
    result = export_core_onnx(load_checkpoint(checkpoint), root / "tiny.onnx")
    build_engine(result.path, root / "engine")
    return TinyModel(checkpoint, result.path, root / "engine", result)
