"""``Detector``: decode -> CLAHE -> letterbox -> engine -> select -> paste, with per-stage timings.

Thread safety: a Detector holds no per-call state. The ONNX Runtime backend shares one
``InferenceSession`` between threads (its ``run`` is thread-safe), so one Detector may be
called from many threads at once; each call allocates its own buffers. The torch reference
backend is also re-entrant (inference mode, no module state changes).
"""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EngineIncompatible, InvalidSpec
from ..io.decode import DEFAULT_MAX_PIXELS, read_image
from ..spec import ModelSpec, PreprocessSpec, specs_from_metadata
from .artifacts import Manifest, resolve_manifest, sha256_file
from .backends.base import Backend
from .postprocess import postprocess
from .preprocess import apply_clahe, check_image, letterbox, normalize
from .result import DetectionResult

if TYPE_CHECKING:
    from ..export.core import CoreMaskRCNN

ImageInput = str | os.PathLike[str] | bytes | np.ndarray

STAGES = ("decode", "clahe", "letterbox", "engine", "paste")


class Detector:
    """Runs one engine with the PreprocessSpec it was built with."""

    def __init__(
        self,
        backend: Backend,
        model: ModelSpec,
        preprocess: PreprocessSpec,
        *,
        score_threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        manifest: Manifest | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.preprocess = preprocess
        self.score_threshold = model.score_threshold if score_threshold is None else float(score_threshold)
        self.max_pixels = max_pixels
        self.manifest = manifest

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        engine: str | os.PathLike[str],
        *,
        score_threshold: float | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Detector:
        """Open an engine (directory, manifest, ``DIR/NAME`` prefix or model file beside its manifest)."""
        manifest = Manifest.read(resolve_manifest(engine))
        backend = open_backend(manifest, threads=threads)
        return cls(
            backend,
            manifest.model,
            manifest.preprocess,
            score_threshold=score_threshold,
            max_pixels=max_pixels,
            manifest=manifest,
        )

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike[str], *, score_threshold: float | None = None, threads: int | None = None
    ) -> Detector:
        """Run a core ONNX directly on ONNX Runtime (specs from its metadata), without building."""
        from .backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, threads=threads)
        model, pre = specs_from_metadata(backend.session.get_modelmeta().custom_metadata_map, path)
        return cls(backend, model, pre, score_threshold=score_threshold)

    @classmethod
    def from_core(
        cls,
        core: CoreMaskRCNN,
        model: ModelSpec,
        preprocess: PreprocessSpec,
        *,
        score_threshold: float | None = None,
    ) -> Detector:
        from .backends.torch_ref import TorchBackend

        return cls(TorchBackend(core), model, preprocess, score_threshold=score_threshold)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, score_threshold: float | None = None, **overrides: Any
    ) -> Detector:
        """The PyTorch reference: the checkpoint's core model run eagerly (needs the export extra)."""
        from .._lazy import require

        require("torchvision", "The PyTorch reference backend")
        from ..export.core import CoreMaskRCNN
        from ..export.models import load_checkpoint

        loaded = load_checkpoint(path, **overrides)
        core = CoreMaskRCNN(loaded.model, loaded.preprocess.input_size, loaded.model_spec.max_detections)
        return cls.from_core(core, loaded.model_spec, loaded.preprocess, score_threshold=score_threshold)

    # --- running ----------------------------------------------------------------------------
    def detect(
        self, image: ImageInput, *, name: str | None = None, score_threshold: float | None = None
    ) -> DetectionResult:
        """Detect instances in a path, encoded bytes, or a uint8/uint16 (H, W[, 3]) RGB array."""
        t0 = perf_counter()
        if name is None and isinstance(image, str | os.PathLike):
            name = str(image)
        pixels = read_image(image, max_pixels=self.max_pixels, name=name)
        decode_ms = (perf_counter() - t0) * 1e3
        return self.detect_pixels(pixels, name=name, score_threshold=score_threshold, decode_ms=decode_ms)

    def detect_pixels(
        self,
        pixels: np.ndarray,
        *,
        name: str | None = None,
        score_threshold: float | None = None,
        decode_ms: float = 0.0,
    ) -> DetectionResult:
        """Detect in already decoded pixels (as ``read_image`` returns them); ``decode_ms`` is recorded."""
        check_image(pixels, name)
        timings: dict[str, float] = {"decode": decode_ms}
        t1 = perf_counter()
        enhanced = apply_clahe(pixels, self.preprocess)
        t2 = perf_counter()
        timings["clahe"] = (t2 - t1) * 1e3
        canvas, scale = letterbox(enhanced, self.preprocess.input_size)
        tensor = normalize(canvas, self.preprocess)
        t3 = perf_counter()
        timings["letterbox"] = (t3 - t2) * 1e3
        outputs = self.backend.infer(tensor)
        t4 = perf_counter()
        timings["engine"] = (t4 - t3) * 1e3
        height, width = pixels.shape[:2]
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise InvalidSpec(f"score_threshold must be in [0, 1], got {score_threshold}", path=name)
        instances = postprocess(
            outputs,
            scale=scale,
            height=height,
            width=width,
            score_threshold=threshold,
            class_names=self.model.class_names,
        )
        t5 = perf_counter()
        timings["paste"] = (t5 - t4) * 1e3
        timings["total"] = decode_ms + (t5 - t1) * 1e3
        return DetectionResult(
            width=width, height=height, instances=instances, image=name, timings_ms=timings
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Detector(backend={self.backend.name!r}, arch={self.model.arch!r}, "
            f"input_size={self.preprocess.input_size}, score_threshold={self.score_threshold})"
        )


def open_backend(manifest: Manifest, *, threads: int | None = None) -> Backend:
    """Check the manifest against this machine, then open the engine file."""
    import platform

    from .._lazy import require

    engine = manifest.engine_path
    if manifest.backend == "onnxruntime":
        ort = require("onnxruntime", "Running an ONNX Runtime engine")
        here = f"onnxruntime {ort.__version__} on {platform.machine()}"
        built = f"onnxruntime {manifest.backend_version} on {manifest.machine}"
        if here != built:
            raise EngineIncompatible(
                f"this engine was built with {built}, this machine has {here}; {manifest.rebuild_hint()}",
                path=manifest.path,
            )
    elif manifest.backend == "tensorrt":
        from .tensorrt.backend import TensorRTBackend
        from .tensorrt.compat import check_manifest

        check_manifest(manifest)  # TensorRT version and compute capability, before the plan is read
        _check_engine_file(manifest, Path(engine))
        return TensorRTBackend(engine, manifest=manifest)
    else:
        raise EngineIncompatible(f"unknown backend {manifest.backend!r}", path=manifest.path)
    _check_engine_file(manifest, Path(engine))
    from .backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(engine, threads=threads)


def _check_engine_file(manifest: Manifest, engine: Path) -> None:
    if not engine.is_file():
        raise EngineIncompatible(
            f"the manifest names {manifest.engine_file}, which is missing; {manifest.rebuild_hint()}",
            path=manifest.path,
        )
    size = engine.stat().st_size
    if size != manifest.engine_bytes:
        raise EngineIncompatible(
            f"{engine.name} is {size} bytes, the manifest says {manifest.engine_bytes} "
            f"(truncated or replaced); {manifest.rebuild_hint()}",
            path=manifest.path,
        )
    if sha256_file(engine) != manifest.engine_sha256:
        raise EngineIncompatible(
            f"{engine.name} does not match the SHA-256 in its manifest (replaced or corrupted); "
            f"{manifest.rebuild_hint()}",
            path=manifest.path,
        )
