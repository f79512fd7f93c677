"""``Detector``: decode, then the pipeline (:mod:`.pipeline`): CLAHE -> letterbox -> engine -> select
-> paste, with per-stage timings and the device of each stage.

Thread safety: a Detector holds no per-call state. The ONNX Runtime backend shares one
``InferenceSession`` between threads (its ``run`` is thread-safe); the TensorRT backend gives each
thread its own execution context, stream and buffers; so one Detector may be called from many
threads at once. The torch reference backend is also re-entrant (inference mode, no module state
changes). ``close()`` waits for the calls in flight to finish, then releases the engine; a call that
starts once ``close()`` has begun raises ``InvalidOption`` (never a backend error).
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

import numpy as np

from .._lazy import require
from ..errors import EngineIncompatible, InvalidOption
from ..io.decode import DEFAULT_MAX_PIXELS, DecodedImage, read_image_info
from ..results.detection import DetectionResult
from ..spec import ModelSpec, PreprocessSpec, specs_from_metadata
from .artifacts import Manifest, resolve_manifest, sha256_file
from .backends.base import Backend
from .bit_depth import OnceWarnings, check_bit_depth, resolve_bit_depth
from .pipeline import STAGES, StagePolicy, check_stages, check_threshold, check_um_per_px, run_pipeline
from .tiling import Tiling

ImageInput = str | os.PathLike[str] | bytes | np.ndarray

__all__ = ["STAGES", "Detector", "ImageInput", "open_backend"]


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
        stages: StagePolicy = "auto",
        um_per_px: float | None = None,
        tiling: Tiling | None = None,
        bit_depth: int | None = None,
    ) -> None:
        self.backend = backend
        self._closed = False
        self._in_flight = 0  # calls running; close() waits for them
        self._state = threading.Condition()
        self.model = model
        self.preprocess = preprocess
        self.score_threshold = check_threshold(
            model.score_threshold if score_threshold is None else score_threshold
        )
        self.max_pixels = max_pixels
        self.manifest = manifest
        self.stages: StagePolicy = check_stages(stages)
        self.um_per_px = check_um_per_px(um_per_px)
        self.tiling = _check_tiling(tiling)
        #: significant bits of 16-bit images (1..16), over what the file says; None: the file's
        self.bit_depth = check_bit_depth(bit_depth)
        self._warnings = OnceWarnings()  # bit-depth warnings, once per Detector

    @property
    def device(self) -> str:
        """Where the engine runs (``"cpu"``, ``"cuda:0"``)."""
        return self._backend().device

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        engine: str | os.PathLike[str],
        *,
        score_threshold: float | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        stages: StagePolicy = "auto",
        um_per_px: float | None = None,
        tiling: Tiling | None = None,
        bit_depth: int | None = None,
    ) -> Detector:
        """Open an engine (directory, manifest, ``DIR/NAME`` prefix or model file beside its manifest).

        ``stages="cpu"`` runs CLAHE, letterbox and paste on the CPU even where the engine offers
        device stages (a TensorRT engine), e.g. to compare the two paths. ``um_per_px`` (the pixel
        size) adds micrometres to the dispense target of models with a ``drop`` class; ``tiling``
        detects in overlapping tiles at the engine's scale (``runtime/tiling.py``).
        ``bit_depth`` (1..16) is the significant bits of 16-bit images, over what their files say
        (``crystal_rt.runtime.bit_depth``); 8-bit images are 8-bit whatever it says."""
        check_stages(stages)
        check_um_per_px(um_per_px)
        _check_tiling(tiling)
        check_bit_depth(bit_depth)
        if score_threshold is not None:
            check_threshold(score_threshold)
        manifest = Manifest.read(resolve_manifest(engine))
        backend = open_backend(manifest, threads=threads)
        return cls(
            backend,
            manifest.model,
            manifest.preprocess,
            score_threshold=score_threshold,
            max_pixels=max_pixels,
            manifest=manifest,
            stages=stages,
            um_per_px=um_per_px,
            tiling=tiling,
            bit_depth=bit_depth,
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

    # --- running ----------------------------------------------------------------------------
    def detect(
        self,
        image: ImageInput,
        *,
        name: str | None = None,
        score_threshold: float | None = None,
        stages: StagePolicy | None = None,
        bit_depth: int | None = None,
    ) -> DetectionResult:
        """Detect instances in a path, encoded bytes, or a uint8/uint16 (H, W[, 3]) RGB array.

        ``bit_depth`` (1..16): the significant bits of a 16-bit image, over the Detector's and the
        file's (TIFF MaxSampleValue / BitsPerSample, PNG sBIT)."""
        with self._call():  # a closed Detector says so before anything else
            t0 = perf_counter()
            if name is None and isinstance(image, str | os.PathLike):
                name = str(image)
            if score_threshold is not None:
                check_threshold(score_threshold, name)
            check_bit_depth(bit_depth)
            decoded = read_image_info(image, max_pixels=self.max_pixels, name=name)
            decode_ms = (perf_counter() - t0) * 1e3
            return self._run(
                decoded,
                name=name,
                score_threshold=score_threshold,
                decode_ms=decode_ms,
                stages=stages,
                bit_depth=bit_depth,
            )

    def detect_pixels(
        self,
        pixels: np.ndarray | DecodedImage,
        *,
        name: str | None = None,
        score_threshold: float | None = None,
        decode_ms: float = 0.0,
        stages: StagePolicy | None = None,
        bit_depth: int | None = None,
    ) -> DetectionResult:
        """Detect in already decoded pixels (as ``read_image`` returns them, or ``read_image_info``'s
        :class:`DecodedImage`, whose file bit depth counts); ``decode_ms`` is recorded. The bit depth
        of a 16-bit image: ``bit_depth``, else the Detector's, else the file's, else none (as is)."""
        with self._call():
            return self._run(
                pixels,
                name=name,
                score_threshold=score_threshold,
                decode_ms=decode_ms,
                stages=stages,
                bit_depth=bit_depth,
            )

    def _run(
        self,
        pixels: np.ndarray | DecodedImage,
        *,
        name: str | None,
        score_threshold: float | None,
        decode_ms: float,
        stages: StagePolicy | None,
        bit_depth: int | None,
    ) -> DetectionResult:
        file_bits = pixels.bit_depth if isinstance(pixels, DecodedImage) else None
        array = pixels.pixels if isinstance(pixels, DecodedImage) else pixels
        bits = resolve_bit_depth(check_bit_depth(bit_depth), self.bit_depth, file_bits)
        return run_pipeline(
            array,
            backend=self.backend,
            model=self.model,
            spec=self.preprocess,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            stages=self.stages if stages is None else stages,
            name=name,
            decode_ms=decode_ms,
            um_per_px=self.um_per_px,
            tiling=self.tiling,
            bit_depth=bits,
            warnings=self._warnings,
        )

    def _backend(self) -> Backend:
        if self._closed:
            raise _closed_error()
        return self.backend

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call in flight: refused once ``close()`` has begun; ``close()`` waits for it."""
        with self._state:
            if self._closed:
                raise _closed_error()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def close(self) -> None:
        """Release the engine (idempotent): calls already running finish first (this waits for
        them); calls made from now on raise ``InvalidOption``."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._in_flight == 0)
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Detector(backend={self.backend.name!r}, arch={self.model.arch!r}, "
            f"input={'x'.join(map(str, self.preprocess.input_hw))}, score_threshold={self.score_threshold})"
        )


def _closed_error() -> InvalidOption:
    return InvalidOption("this Detector is closed; load the engine again")


def open_backend(manifest: Manifest, *, threads: int | None = None) -> Backend:
    """Check the manifest against this machine, then open the engine file."""

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
    elif manifest.backend in ("onnxruntime-cuda", "onnxruntime-trt"):
        from .backends.ort_gpu import check_ort_gpu_manifest, open_ort_gpu

        check_ort_gpu_manifest(manifest)
        _check_engine_file(manifest)
        return open_ort_gpu(manifest)  # type: ignore[no-any-return]
    elif manifest.backend == "tensorrt":
        from .tensorrt.backend import TensorRTBackend
        from .tensorrt.compat import check_manifest

        check_manifest(manifest)  # TensorRT version and compute capability, before the plan is read
        _check_engine_file(manifest)
        return TensorRTBackend(engine, manifest=manifest)
    else:
        raise EngineIncompatible(f"unknown backend {manifest.backend!r}", path=manifest.path)
    _check_engine_file(manifest)
    from .backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(engine, threads=threads)


def _check_engine_file(manifest: Manifest) -> None:
    engine = manifest.checked_engine_path()  # a regular file in the manifest's folder
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


def _check_tiling(tiling: Tiling | None) -> Tiling | None:
    if tiling is not None and not isinstance(tiling, Tiling):
        raise InvalidOption(f"tiling must be a crystal_rt.runtime.tiling.Tiling, got {type(tiling).__name__}")
    return None if tiling is None or tiling.mode == "off" else tiling
