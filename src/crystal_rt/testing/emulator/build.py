"""Build .cu kernels with g++ against ``cuda_emu.hpp`` (the CPU emulator) and load them with ctypes.

``build_library(sources, wrapper_cpp, name)`` writes one translation unit::

    #include "cuda_emu.hpp"          // unless the wrapper already includes it
    #include "/abs/path/source.cu"    // each source, unless the wrapper already includes it
    <wrapper_cpp>                     // extern "C" host entry points calling emu::launch(...)

compiles it into a shared library in a content-addressed cache (key: the wrapper, every file in
the sources' folders and in this folder, the flags and the compiler version) and loads it.
Concurrent processes are safe: each compiles to a unique temporary name and renames it into place.

``tsan=True`` builds the threads mode (``-DCUDA_EMU_THREADS``) with ``-fsanitize=thread``. A
ThreadSanitizer library cannot be loaded into a normal Python process, so use
``build_executable`` (a main() in the wrapper) for TSan runs.

Test support: needs a C++20 g++ (``$CXX``); without one, :class:`EmulatorUnavailable`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ...errors import BackendUnavailable

EMU_DIR = Path(__file__).resolve().parent
EMU_HEADER = EMU_DIR / "cuda_emu.hpp"
BASE_FLAGS = ("-O1", "-std=c++20", "-pthread", "-ffp-contract=off", "-fno-fast-math")
TSAN_FLAGS = ("-DCUDA_EMU_THREADS", "-fsanitize=thread", "-g")


class EmulatorUnavailable(BackendUnavailable):
    """The CUDA CPU emulator cannot be built here (no C++20 compiler, or it failed)."""


def cache_dir() -> Path:
    """``$CRYSTAL_RT_EMU_CACHE``, else ``$CRYSTAL_RT_CACHE/emu``, else ``~/.cache/crystal-rt/emu``."""
    env = os.environ.get("CRYSTAL_RT_EMU_CACHE")
    if env:
        root = Path(env)
    elif os.environ.get("CRYSTAL_RT_CACHE"):
        root = Path(os.environ["CRYSTAL_RT_CACHE"]) / "emu"
    else:
        root = Path.home() / ".cache" / "crystal-rt" / "emu"
    root.mkdir(parents=True, exist_ok=True)
    return root


def compiler() -> str:
    """The g++ to use (``$CXX`` if set)."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx or shutil.which(cxx) is None:
        raise EmulatorUnavailable("the CUDA CPU emulator needs a C++20 compiler (g++ 10 or newer, or $CXX)")
    return cxx


def translation_unit(sources: Sequence[Path], wrapper_cpp: str) -> str:
    lines = []
    if "cuda_emu.hpp" not in wrapper_cpp:
        lines.append(f'#include "{EMU_HEADER}"')
    for src in sources:
        path = Path(src).resolve()
        if path.name not in wrapper_cpp:
            lines.append(f'#include "{path}"')
    lines.append(wrapper_cpp)
    return "\n".join(lines) + "\n"


def _key(cxx: str, flags: Sequence[str], unit: str, sources: Sequence[Path]) -> str:
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    h.update(version.encode())
    h.update("\0".join(flags).encode())
    h.update(unit.encode())
    folders = {EMU_DIR, *(Path(s).resolve().parent for s in sources)}
    for folder in sorted(folders):
        for f in sorted(folder.iterdir()):
            if f.suffix in {".cu", ".cuh", ".hpp", ".h", ".cpp"} and f.is_file():
                h.update(str(f).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:24]


def _compile(
    sources: Sequence[Path], wrapper_cpp: str, name: str, extra: Sequence[str], suffix: str, tsan: bool
) -> Path:
    cxx = compiler()
    flags = [*BASE_FLAGS, *(TSAN_FLAGS if tsan else ()), *extra]
    includes = sorted({f"-I{Path(s).resolve().parent}" for s in sources} | {f"-I{EMU_DIR}"})
    unit = translation_unit(sources, wrapper_cpp)
    out_dir = cache_dir()
    target = out_dir / f"{name}-{_key(cxx, [*flags, *includes], unit, sources)}{suffix}"
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=suffix, dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    src_file = tmp.with_suffix(".cpp")
    src_file.write_text(unit)
    cmd = [cxx, *flags, *includes, "-x", "c++", str(src_file), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EmulatorUnavailable(
                f"the CUDA emulator build of {name} failed: {' '.join(cmd)}\n{proc.stderr[-8000:]}"
            )
        os.replace(tmp, target)  # atomic: a racing process either sees nothing or a complete file
    finally:
        tmp.unlink(missing_ok=True)
        src_file.unlink(missing_ok=True)
    return target


def build_library(
    sources: Sequence[Path],
    wrapper_cpp: str,
    name: str,
    *,
    tsan: bool = False,
    extra: Sequence[str] = (),
) -> ctypes.CDLL:
    """Compile ``sources`` + ``wrapper_cpp`` into a cached shared library and load it.

    With ``tsan=True`` the library is built with ThreadSanitizer; it only loads into a process
    started with ``LD_PRELOAD=$(g++ -print-file-name=libtsan.so)`` (prefer ``build_executable``).
    """
    path = _compile(sources, wrapper_cpp, name, ("-shared", "-fPIC", *extra), ".so", tsan)
    return ctypes.CDLL(str(path))


def build_executable(sources: Sequence[Path], main_cpp: str, name: str, *, tsan: bool = False) -> Path:
    """Compile ``sources`` + ``main_cpp`` (which defines ``main``) into a cached executable."""
    return _compile(sources, main_cpp, name, (), ".exe", tsan)
