"""Engines on disk: ``NAME.onnx`` or ``NAME.plan`` beside ``NAME.manifest.json``.

An ENGINE argument may be the directory (when it holds exactly one engine), the manifest path,
the ``DIR/NAME`` prefix, or the model file next to its manifest. The manifest is read and checked
before the model file is touched, so an engine built elsewhere is refused with one sentence
saying what was built where and how to rebuild.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import EngineIncompatible, EngineNotFound
from ..spec import ModelSpec, PreprocessSpec

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "crystal-rt-engine"
MANIFEST_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Manifest:
    """What an engine is and where it was built (docs/contract.md, "Engine artifacts")."""

    name: str
    backend: str
    backend_version: str
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    source_onnx: str
    source_onnx_sha256: str
    precision: str
    input_shape: list[int]
    preprocess: PreprocessSpec
    model: ModelSpec
    crystal_rt_version: str
    build_time: str
    machine: str = field(default_factory=platform.machine)
    cuda_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was read from (not stored)

    @classmethod
    def for_engine(
        cls,
        engine: Path,
        source: Path,
        *,
        name: str,
        backend: str,
        backend_version: str,
        precision: str,
        input_shape: list[int],
        preprocess: PreprocessSpec,
        model: ModelSpec,
        source_sha256: str | None = None,
        **fields: Any,
    ) -> Manifest:
        """The manifest of a just-built ``engine`` file: hashes, size, versions, machine and time
        are filled in here; backend-specific ``fields`` (cuda_version, gpu_name, build_options, ...)
        are passed through."""

        return cls(
            name=name,
            backend=backend,
            backend_version=backend_version,
            engine_file=engine.name,
            engine_sha256=sha256_file(engine),
            engine_bytes=engine.stat().st_size,
            source_onnx=str(source.resolve()),
            source_onnx_sha256=source_sha256 or sha256_file(source),
            precision=precision,
            input_shape=input_shape,
            preprocess=preprocess,
            model=model,
            crystal_rt_version=__version__,
            build_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            machine=platform.machine(),
            **fields,
        )

    @property
    def engine_path(self) -> Path:
        base = self.path.parent if self.path else Path(".")
        return base / self.engine_file

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "name": self.name,
            "crystal_rt_version": self.crystal_rt_version,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "engine_file": self.engine_file,
            "engine_sha256": self.engine_sha256,
            "engine_bytes": self.engine_bytes,
            "source_onnx": self.source_onnx,
            "source_onnx_sha256": self.source_onnx_sha256,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "machine": self.machine,
            "cuda_version": self.cuda_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "preprocess": self.preprocess.to_dict(),
            "model": self.model.to_dict(),
            "build_options": self.build_options,
            "build_time": self.build_time,
        }

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / f"{self.name}{MANIFEST_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineIncompatible(f"unreadable engine manifest ({exc})", path=path) from exc
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise EngineIncompatible("not a crystal-rt engine manifest", path=path)
        if data.get("format_version") != MANIFEST_VERSION:
            raise EngineIncompatible(
                f"manifest format {data.get('format_version')} is not {MANIFEST_VERSION}: "
                "rebuild the engine with this crystal-rt (crystal-rt build-engine)",
                path=path,
            )
        try:
            return cls(
                name=data["name"],
                backend=data["backend"],
                backend_version=data["backend_version"],
                engine_file=data["engine_file"],
                engine_sha256=data["engine_sha256"],
                engine_bytes=int(data["engine_bytes"]),
                source_onnx=data["source_onnx"],
                source_onnx_sha256=data["source_onnx_sha256"],
                precision=data["precision"],
                input_shape=list(data["input_shape"]),
                preprocess=PreprocessSpec.from_dict(data["preprocess"]),
                model=ModelSpec.from_dict(data["model"]),
                crystal_rt_version=data["crystal_rt_version"],
                build_time=data["build_time"],
                machine=data.get("machine", ""),
                cuda_version=data.get("cuda_version"),
                gpu_name=data.get("gpu_name"),
                compute_capability=data.get("compute_capability"),
                build_options=dict(data.get("build_options") or {}),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineIncompatible(f"engine manifest lacks or mangles {exc}", path=path) from exc

    def rebuild_hint(self) -> str:
        out = self.path.parent if self.path else Path("engines")
        backend = f" --backend {self.backend}" if self.backend != "onnxruntime" else ""
        precision = f" --precision {self.precision}" if self.precision != "fp32" else ""
        return f"rebuild it here: crystal-rt build-engine {self.source_onnx} -o {out}{backend}{precision}"


def resolve_manifest(location: str | os.PathLike[str]) -> Path:
    """The manifest for an ENGINE argument (directory, manifest, DIR/NAME prefix or model file)."""
    loc = Path(location)
    if loc.is_dir():
        found = sorted(loc.glob(f"*{MANIFEST_SUFFIX}"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise EngineNotFound(
                f"no engine (*{MANIFEST_SUFFIX}) in this folder; build one with "
                f"crystal-rt build-engine MODEL -o {loc}",
                path=loc,
            )
        names = ", ".join(p.name[: -len(MANIFEST_SUFFIX)] for p in found)
        raise EngineNotFound(f"this folder holds several engines ({names}): name one as {loc}/NAME", path=loc)
    if loc.name.endswith(MANIFEST_SUFFIX) and loc.is_file():
        return loc
    candidates = [Path(f"{loc}{MANIFEST_SUFFIX}")]
    if loc.suffix in (".onnx", ".plan"):
        candidates.append(loc.with_name(loc.stem + MANIFEST_SUFFIX))
    for cand in candidates:
        if cand.is_file():
            return cand
    if loc.is_file():
        raise EngineNotFound(
            f"not an engine (no {loc.stem}{MANIFEST_SUFFIX} beside it); build one with "
            f"crystal-rt build-engine {loc} -o engines/",
            path=loc,
        )
    raise EngineNotFound("engine not found", path=loc)
