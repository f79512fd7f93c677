"""Compile ``kernels/*.cu`` with NVRTC at first use, cache the CUBIN, report ptxas resources.

* Targets: the exact compute capability of the device (``sm_XX``, a CUBIN), or any list of
  archs (``crystal-rt cuda build --arch ...``); ``compute_XX`` gives PTX instead (JIT-compiled by
  the driver, which must be at least as new as this NVRTC).
* Options: ``--std=c++17 --fmad=false`` plus the include path of ``kernels/``; never
  ``--use_fast_math`` (CLAHE and the letterbox must stay bit-exact with OpenCV). CUBIN builds add
  ``--ptxas-options=-v`` so that the compile log carries ptxas' registers/spills per kernel.
* Cache: ``$CRYSTAL_RT_CACHE/cuda`` if set, else ``$XDG_CACHE_HOME/crystal-rt/cuda`` or
  ``~/.cache/crystal-rt/cuda``. Key: sha256 of the source and every header it includes, the
  options, the arch and the NVRTC version. Writes are atomic (temporary file + rename); a
  ``.json`` sidecar (written last) holds the log and the parsed resources.

Importing this module imports no CUDA module: cuda-python is imported inside the functions that
need it (``crystal_rt._lazy.require``), so ``crystal-rt cuda info`` and the tests can report its
absence in one sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .._lazy import require
from ..errors import BackendUnavailable, KernelBuildError
from .binding import driver as _driver_module
from .probe import probe

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
#: Archs every kernel must compile for without spills (docs/contract.md, "What is checked where").
DEFAULT_ARCHS: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_110", "sm_120")
BASE_OPTIONS: tuple[str, ...] = ("--std=c++17", "--fmad=false")
RESOURCE_OPTION = "--ptxas-options=-v"
CACHE_FORMAT = "crystal-rt-cuda-cache-v1"

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)
_ARCH_RE = re.compile(r"^(sm|compute)_(\d{2,3}[a-z]?)$")


def _cuda_module(name: str) -> ModuleType:
    return require(f"cuda.bindings.{name}", "Compiling the CUDA kernels", package="cuda-python", extra="gpu")


# ---------------------------------------------------------------------------------------------
# sources


def kernel_names() -> list[str]:
    """Names (file stems) of the kernels that ship with crystal-rt, e.g. ``["clahe", "letterbox", ...]``."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


def kernel_path(name: str) -> Path:
    path = KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        raise KernelBuildError(f"no CUDA kernel source {name}.cu (have: {', '.join(kernel_names())})")
    return path


def included_files(path: Path, include_dirs: Sequence[Path] = (KERNEL_DIR,)) -> list[Path]:
    """``path`` and every quoted ``#include`` it pulls in (recursively), in first-seen order."""
    seen: list[Path] = []

    def visit(p: Path) -> None:
        if p in seen:
            return
        seen.append(p)
        for inc in _INCLUDE_RE.findall(p.read_text(encoding="utf-8")):
            for folder in (p.parent, *include_dirs):
                candidate = (folder / inc).resolve()
                if candidate.is_file():
                    visit(candidate)
                    break

    visit(path.resolve())
    return seen


def source_digest(path: Path) -> str:
    """sha256 over the source and its included headers (names and contents)."""
    h = hashlib.sha256()
    for f in included_files(path):
        h.update(f.name.encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# archs, NVRTC, device


def normalize_arch(arch: str | int) -> str:
    """``"sm_87"``, ``"87"``, ``87``, ``"8.7"`` -> ``"sm_87"``; ``"compute_87"`` stays PTX."""
    text = str(arch).strip().lower()
    if re.fullmatch(r"\d+\.\d+", text):
        major, minor = text.split(".")
        text = f"sm_{major}{minor}"
    elif re.fullmatch(r"\d{2,3}[a-z]?", text):
        text = f"sm_{text}"
    if not _ARCH_RE.match(text):
        raise KernelBuildError(f"not a CUDA architecture: {arch!r} (expected e.g. sm_87, compute_87 or 8.7)")
    return text


def parse_arch_list(text: str) -> list[str]:
    """``"sm_75,sm_80"`` or ``"all"`` (DEFAULT_ARCHS) -> normalised archs, duplicates removed."""
    if text.strip().lower() == "all":
        return list(DEFAULT_ARCHS)
    out: list[str] = []
    for part in text.split(","):
        if part.strip():
            arch = normalize_arch(part)
            if arch not in out:
                out.append(arch)
    if not out:
        raise KernelBuildError("empty --arch list")
    return out


def arch_number(arch: str) -> int:
    m = _ARCH_RE.match(normalize_arch(arch))
    assert m is not None
    return int(re.sub(r"[a-z]$", "", m.group(2)))


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _cuda_module("nvrtc")
    err, major, minor = nvrtc.nvrtcVersion()
    _check_nvrtc(nvrtc, err, "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> list[str]:
    """The ``sm_XX`` this NVRTC can generate code for."""
    nvrtc = _cuda_module("nvrtc")
    err, archs = nvrtc.nvrtcGetSupportedArchs()
    _check_nvrtc(nvrtc, err, "nvrtcGetSupportedArchs")
    return [f"sm_{int(a)}" for a in archs]


def _check_nvrtc(nvrtc: ModuleType, err: Any, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(err)
        msg = text.decode() if isinstance(text, bytes) else str(text)
        raise KernelBuildError(f"{what} failed: {msg}")


def device_arch(device: int = 0) -> str:
    """``sm_XX`` of CUDA device ``device``; BackendUnavailable where there is no driver or GPU."""

    driver = _driver_module("Finding the CUDA device")
    state = probe()
    if not state.usable:
        raise BackendUnavailable(state.message)
    err, count = driver.cuDeviceGetCount()
    if err != driver.CUresult.CUDA_SUCCESS or int(count) <= device:
        raise BackendUnavailable(f"no CUDA device {device}")
    err, dev = driver.cuDeviceGet(device)
    attr = driver.CUdevice_attribute
    _, major = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    _, minor = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return f"sm_{int(major)}{int(minor)}"


def target_for(arch: str) -> str:
    """The arch to compile for ``arch``: itself when NVRTC supports it, else PTX for the newest
    supported arch below it (JIT-compiled by the driver at load)."""
    arch = normalize_arch(arch)
    if arch.startswith("compute_"):
        return arch
    supported = supported_archs()
    if arch in supported:
        return arch
    lower = [a for a in supported if arch_number(a) <= arch_number(arch)]
    if not lower:
        raise KernelBuildError(
            f"this NVRTC cannot generate code for {arch} (supports {', '.join(supported)})"
        )
    return "compute_" + str(max(arch_number(a) for a in lower))


# ---------------------------------------------------------------------------------------------
# cache


def cache_dir() -> Path:
    """``$CRYSTAL_RT_CACHE/cuda`` if set, else ``$XDG_CACHE_HOME/crystal-rt/cuda``, else
    ``~/.cache/crystal-rt/cuda``."""
    env = os.environ.get("CRYSTAL_RT_CACHE")
    if env:
        return Path(env).expanduser() / "cuda"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crystal-rt" / "cuda"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# resources


@dataclass(frozen=True)
class KernelResources:
    """ptxas' report for one entry function."""

    function: str
    arch: str
    registers: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared_bytes: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS_RE = re.compile(r"Function properties for (\S+)")
_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED_RE = re.compile(r"Used (\d+) registers")
_SMEM_RE = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> tuple[KernelResources, ...]:
    """Resources per entry function from ``ptxas -v`` output (NVRTC's log or nvcc's stderr)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    current: tuple[str, str] | None = None
    props_for: str | None = None
    for line in log.splitlines():
        if m := _ENTRY_RE.search(line):
            current = (m.group(1), m.group(2))
            found.setdefault(current, {"function": current[0], "arch": current[1]})
            props_for = None
            continue
        if m := _PROPS_RE.search(line):
            props_for = m.group(1)
            continue
        if (m := _FRAME_RE.search(line)) and current is not None and props_for in (None, current[0]):
            found[current].update(
                stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3))
            )
            continue
        if (m := _USED_RE.search(line)) and current is not None:
            found[current]["registers"] = int(m.group(1))
            if s := _SMEM_RE.search(line):
                found[current]["shared_bytes"] = int(s.group(1))
    return tuple(KernelResources(**v) for v in found.values())


# ---------------------------------------------------------------------------------------------
# compile


@dataclass(frozen=True)
class CompiledKernel:
    """One kernel source compiled for one arch: the CUBIN (or PTX) image and how it was made."""

    name: str
    arch: str
    image: bytes = field(repr=False)
    options: tuple[str, ...]
    key: str
    log: str
    resources: tuple[KernelResources, ...]
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def is_ptx(self) -> bool:
        return self.arch.startswith("compute_")


def compile_options(arch: str, extra_options: Iterable[str] = ()) -> tuple[str, ...]:
    arch = normalize_arch(arch)
    opts = [*BASE_OPTIONS, f"-arch={arch}", f"--include-path={KERNEL_DIR}", *extra_options]
    if not arch.startswith("compute_") and RESOURCE_OPTION not in opts:
        opts.append(RESOURCE_OPTION)
    if any(o in ("--use_fast_math", "-use_fast_math") for o in opts):
        raise KernelBuildError("--use_fast_math would break bit-exactness with OpenCV; not allowed")
    return tuple(opts)


def cache_key(source: Path, options: Sequence[str], arch: str, nvrtc: tuple[int, int]) -> str:
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, source_digest(source), "\0".join(options), arch, f"{nvrtc[0]}.{nvrtc[1]}"):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


def _nvrtc_compile(source: Path, arch: str, options: Sequence[str]) -> tuple[bytes, str]:
    nvrtc = _cuda_module("nvrtc")
    text = source.read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(text, source.name.encode(), 0, [], [])
    _check_nvrtc(nvrtc, err, "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check_nvrtc(nvrtc, err, "nvrtcGetProgramLogSize")
        # NVRTC writes into the buffer it is given: never an immutable bytes object (for size 1,
        # b" " * 1 and bytes(1) are CPython's shared one-byte objects, and NVRTC's NUL would turn
        # every b" " in the process into b"\x00")
        buf = bytearray(size)
        (err,) = nvrtc.nvrtcGetProgramLog(prog, buf)
        log = bytes(buf).rstrip(b"\0 ").decode(errors="replace")
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelBuildError(f"NVRTC failed to compile {source.name} for {arch}", log)
        ptx = arch.startswith("compute_")
        err, size = nvrtc.nvrtcGetPTXSize(prog) if ptx else nvrtc.nvrtcGetCUBINSize(prog)
        _check_nvrtc(nvrtc, err, "nvrtcGetPTXSize" if ptx else "nvrtcGetCUBINSize")
        image = bytearray(size)
        (err,) = nvrtc.nvrtcGetPTX(prog, image) if ptx else nvrtc.nvrtcGetCUBIN(prog, image)
        _check_nvrtc(nvrtc, err, "nvrtcGetPTX" if ptx else "nvrtcGetCUBIN")
        return bytes(image), log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_kernel(
    name: str,
    arch: str | None = None,
    *,
    extra_options: Iterable[str] = (),
    use_cache: bool = True,
    device: int = 0,
) -> CompiledKernel:
    """Compile ``kernels/<name>.cu`` for ``arch`` (default: the device's), through the cache."""
    source = kernel_path(name)
    target = target_for(arch if arch is not None else device_arch(device))
    options = compile_options(target, extra_options)
    version = nvrtc_version()
    key = cache_key(source, options, target, version)
    suffix = ".ptx" if target.startswith("compute_") else ".cubin"
    image_path = cache_dir() / f"{name}-{target}-{key[:20]}{suffix}"
    meta_path = image_path.with_suffix(".json")
    if use_cache and image_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") == key:
                return CompiledKernel(
                    name=name,
                    arch=target,
                    image=image_path.read_bytes(),
                    options=options,
                    key=key,
                    log=str(meta.get("log", "")),
                    resources=tuple(KernelResources(**r) for r in meta.get("resources", [])),
                    cache_path=image_path,
                    from_cache=True,
                )
        except (OSError, ValueError, TypeError):
            pass  # unreadable or partial entry: rebuild it
    image, log = _nvrtc_compile(source, target, options)
    resources = parse_ptxas_log(log)
    cache_path: Path | None = None
    if use_cache:
        try:
            _atomic_write(image_path, image)
            meta = {
                "key": key,
                "name": name,
                "arch": target,
                "options": list(options),
                "nvrtc": list(version),
                "log": log,
                "resources": [asdict(r) for r in resources],
            }
            _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
            cache_path = image_path
        except OSError:
            cache_path = None  # a read-only cache only costs a recompile next time
    return CompiledKernel(name, target, image, options, key, log, resources, cache_path, False)


def build_all(
    archs: Sequence[str], names: Sequence[str] | None = None, *, use_cache: bool = True
) -> list[CompiledKernel]:
    """Compile every kernel (or ``names``) for every arch in ``archs``: warms the cache."""
    return [
        compile_kernel(name, arch, use_cache=use_cache)
        for arch in archs
        for name in (names if names is not None else kernel_names())
    ]
