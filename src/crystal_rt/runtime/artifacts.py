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
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CrystalRtError, EngineIncompatible, EngineNotFound
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
        """The manifest at ``path``, its schema and types checked here, in one place (every
        command and ``Detector.load`` read manifests through this): a regular file of at most
        :data:`MAX_MANIFEST_BYTES`, JSON nested at most :data:`MAX_MANIFEST_NESTING` deep, every
        field of its type, ``engine_file`` a plain file name in the manifest's folder. Any fault is
        one :class:`EngineIncompatible` naming the file."""
        path = Path(path)
        data = _load_manifest_json(path)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise EngineIncompatible("not a crystal-rt engine manifest", path=path)
        if data.get("format_version") != MANIFEST_VERSION:
            raise EngineIncompatible(
                f"manifest format {_shown(data.get('format_version'))} is not {MANIFEST_VERSION}: "
                "rebuild the engine with this crystal-rt (crystal-rt build-engine)",
                path=path,
            )
        _check_manifest_fields(data, path)
        try:
            preprocess = PreprocessSpec.from_dict(data["preprocess"])
            model = ModelSpec.from_dict(data["model"])
        except CrystalRtError as exc:
            raise EngineIncompatible(f"engine manifest: {exc.message}", path=path) from exc
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise EngineIncompatible(
                f"engine manifest: bad preprocess or model ({type(exc).__name__}: {_shown(str(exc))})",
                path=path,
            ) from exc
        return cls(
            name=data["name"],
            backend=data["backend"],
            backend_version=data["backend_version"],
            engine_file=data["engine_file"],
            engine_sha256=data["engine_sha256"],
            engine_bytes=data["engine_bytes"],
            source_onnx=data["source_onnx"],
            source_onnx_sha256=data["source_onnx_sha256"],
            precision=data["precision"],
            input_shape=list(data["input_shape"]),
            preprocess=preprocess,
            model=model,
            crystal_rt_version=data["crystal_rt_version"],
            build_time=data["build_time"],
            machine=data.get("machine") or "",
            cuda_version=data.get("cuda_version"),
            gpu_name=data.get("gpu_name"),
            compute_capability=data.get("compute_capability"),
            build_options=dict(data.get("build_options") or {}),
            path=path,
        )

    def checked_engine_path(self) -> Path:
        """The engine file, refused (:class:`EngineIncompatible`) where it is not a regular file
        inside the manifest's folder: a link out of the folder, a named pipe, a device."""
        engine = self.engine_path
        folder = engine.parent
        try:
            resolved = engine.resolve(strict=True)
            inside = resolved.is_relative_to(folder.resolve(strict=True))
            mode = resolved.stat().st_mode
        except (OSError, RuntimeError) as exc:  # missing, a loop of links, unreadable
            raise EngineIncompatible(
                f"the manifest names {self.engine_file}, which is missing; {self.rebuild_hint()}",
                path=self.path,
            ) from exc
        if not inside:
            raise EngineIncompatible(
                f"the manifest's engine_file {self.engine_file} is a link out of the engine folder "
                f"{folder}; copy the model file into the folder",
                path=self.path,
            )
        if not stat.S_ISREG(mode):
            raise EngineIncompatible(
                f"the manifest's engine_file {self.engine_file} is not a regular file", path=self.path
            )
        return engine

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


#: a manifest is a few KB; larger ones are refused unread
MAX_MANIFEST_BYTES = 2**20
#: a manifest's JSON is 3 levels deep; deeper nesting is refused
MAX_MANIFEST_NESTING = 32
_REQUIRED_STRINGS = (
    "name",
    "backend",
    "backend_version",
    "engine_file",
    "engine_sha256",
    "source_onnx",
    "source_onnx_sha256",
    "precision",
    "crystal_rt_version",
    "build_time",
)
_OPTIONAL_STRINGS = ("machine", "cuda_version", "gpu_name", "compute_capability")


def _shown(value: object, limit: int = 80) -> str:
    """A value for a one-line message: repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _load_manifest_json(path: Path) -> Any:
    """The parsed JSON of a regular file of at most MAX_MANIFEST_BYTES, nested at most
    MAX_MANIFEST_NESTING deep."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise EngineIncompatible("the engine manifest is not a regular file", path=path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise EngineIncompatible("the engine manifest is not a regular file", path=path)
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise EngineIncompatible(f"unreadable engine manifest ({exc.strerror or exc})", path=path) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise EngineIncompatible(
            f"engine manifest larger than {MAX_MANIFEST_BYTES} bytes (a manifest is a few KB); not read",
            path=path,
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise EngineIncompatible("engine manifest nested too deeply to parse", path=path) from exc
    except ValueError as exc:  # not UTF-8, not JSON, an integer of too many digits
        raise EngineIncompatible(f"unreadable engine manifest ({_shown(str(exc), 120)})", path=path) from exc
    if _nesting(data) > MAX_MANIFEST_NESTING:
        raise EngineIncompatible(
            f"engine manifest nested more than {MAX_MANIFEST_NESTING} levels deep", path=path
        )
    return data


def _nesting(data: Any) -> int:
    """How deep JSON containers nest (without recursion)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_manifest_fields(data: dict[str, Any], path: Path) -> None:
    """Every field present and of its type; ``engine_file`` a plain name in the manifest's folder."""
    for key in (*_REQUIRED_STRINGS, "engine_bytes", "input_shape", "preprocess", "model"):
        if key not in data:
            raise EngineIncompatible(f"engine manifest lacks {key!r}", path=path)

    def wrong(key: str, expected: str) -> EngineIncompatible:
        return EngineIncompatible(
            f"engine manifest: {key} must be {expected}, got {type(data[key]).__name__} {_shown(data[key])}",
            path=path,
        )

    for key in _REQUIRED_STRINGS:
        if not isinstance(data[key], str):
            raise wrong(key, "a string")
    for key in _OPTIONAL_STRINGS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise wrong(key, "a string or null")
    size = data["engine_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise wrong("engine_bytes", "a whole number of bytes")
    shape = data["input_shape"]
    if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise wrong("input_shape", "a list of integers")
    for key in ("preprocess", "model"):
        if not isinstance(data[key], dict):
            raise wrong(key, "an object")
    if data.get("build_options") is not None and not isinstance(data["build_options"], dict):
        raise wrong("build_options", "an object or null")
    name = data["engine_file"]
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).name != name:
        raise EngineIncompatible(
            f"engine manifest: engine_file must be a file name in the manifest's folder, got {_shown(name)}",
            path=path,
        )
