"""crystal-rt's own ``kernels/*.cu`` built for the CPU emulator, launched from a ``void**`` like the driver.

:class:`EmulatedModule` is one kernel source file (what ``cuModuleLoadData`` loads on a GPU): every
``extern "C" __global__`` function in it, each reachable by name with a launch entry that takes the
grid, block, dynamic shared memory and the very ``kernelParams`` array a ``cuLaunchKernel`` caller
packs. Each kernel also reports its parameter kinds (``p`` pointer, ``i``/``I`` 32-bit, ``q``/``Q``
64-bit integer, ``f`` float, ``d`` double, ``h`` 16-bit, ``b`` 8-bit), so a caller can copy the
parameters at launch time (as the driver does) and check the pointers it was given.

Test support, used by :mod:`crystal_rt.testing.simulated_gpu`.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ...cuda.build import KERNEL_DIR, kernel_names
from .build import build_library

#: bytes of each parameter kind
KIND_SIZES = {"p": 8, "q": 8, "Q": 8, "d": 8, "i": 4, "I": 4, "f": 4, "h": 2, "b": 1}

_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\('
)

_ENTRY = r"""
#include <cstring>
#include <exception>
#include <type_traits>
#include <utility>
namespace crt_emu_entry {
template <class T>
constexpr char kind() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 8) return std::is_signed_v<T> ? 'q' : 'Q';
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 4) return std::is_signed_v<T> ? 'i' : 'I';
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 2) return 'h';
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 1) return 'b';
    else return '?';
}
template <class... P>
const char* kinds(void (*)(P...)) {
    static const char s[] = {kind<std::decay_t<P>>()..., '\0'};
    return s;
}
template <class... P, std::size_t... I>
void launch_packed(void (*k)(P...), dim3 g, dim3 b, unsigned long long smem, void** params,
                   std::index_sequence<I...>) {
    emu::launch(g, b, smem, k, (*reinterpret_cast<std::decay_t<P>*>(params[I]))...);
}
template <class... P>
int run(void (*k)(P...), dim3 g, dim3 b, unsigned long long smem, void** params, char* err, int errlen) {
    try {
        launch_packed(k, g, b, smem, params, std::index_sequence_for<P...>{});
    } catch (const std::exception& e) {
        std::strncpy(err, e.what(), errlen > 0 ? errlen - 1 : 0);
        return -1;
    }
    return 0;
}
struct Entry {
    const char* name;
    const char* kinds;
    int (*run)(dim3, dim3, unsigned long long, void**, char*, int);
};
}  // namespace crt_emu_entry
#define CRT_EMU_KERNEL(NAME)                                                                       \
    {#NAME, crt_emu_entry::kinds(&NAME),                                                           \
     [](dim3 g, dim3 b, unsigned long long s, void** p, char* e, int n) -> int {                  \
         return crt_emu_entry::run(&NAME, g, b, s, p, e, n);                                       \
     }},
static const crt_emu_entry::Entry kCrtEmuKernels[] = {
@KERNELS@
};
extern "C" int crt_emu_count() { return (int)(sizeof(kCrtEmuKernels) / sizeof(kCrtEmuKernels[0])); }
extern "C" const char* crt_emu_name(int i) { return kCrtEmuKernels[i].name; }
extern "C" const char* crt_emu_kinds(int i) { return kCrtEmuKernels[i].kinds; }
extern "C" int crt_emu_launch(int i, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, unsigned long long smem, void** params, char* err, int errlen) {
    return kCrtEmuKernels[i].run(dim3(gx, gy, gz), dim3(bx, by, bz), smem, params, err, errlen);
}
"""


def kernels_in(source: Path) -> list[str]:
    """The ``extern "C" __global__`` function names defined in ``source``."""
    return _KERNEL_RE.findall(source.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class EmulatedKernel:
    index: int
    name: str
    kinds: str

    @property
    def param_bytes(self) -> tuple[int, ...]:
        return tuple(KIND_SIZES[k] for k in self.kinds)


class EmulatedModule:
    """``kernels/<name>.cu`` compiled with g++ against the emulator: its kernels by name."""

    def __init__(self, name: str, extra_flags: tuple[str, ...] = ()) -> None:
        """``extra_flags`` go to g++ after the emulator's own (e.g. ``-ffp-contract=fast -mfma``, to show
        that the kernels' explicit rounding intrinsics keep results independent of contraction)."""
        self.name = name
        self.source = KERNEL_DIR / f"{name}.cu"
        names = kernels_in(self.source)
        wrapper = _ENTRY.replace("@KERNELS@", "\n".join(f"    CRT_EMU_KERNEL({n})" for n in names))
        tag = "-".join(f.strip("-").replace("=", "") for f in extra_flags)
        self._lib = build_library(
            [self.source], wrapper, f"sim-{name}{'-' + tag if tag else ''}", extra=extra_flags
        )
        lib = self._lib
        lib.crt_emu_count.restype = ctypes.c_int
        lib.crt_emu_name.restype = ctypes.c_char_p
        lib.crt_emu_name.argtypes = [ctypes.c_int]
        lib.crt_emu_kinds.restype = ctypes.c_char_p
        lib.crt_emu_kinds.argtypes = [ctypes.c_int]
        lib.crt_emu_launch.restype = ctypes.c_int
        lib.crt_emu_launch.argtypes = [
            ctypes.c_int,
            *[ctypes.c_uint] * 6,
            ctypes.c_ulonglong,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self.kernels: dict[str, EmulatedKernel] = {}
        for i in range(lib.crt_emu_count()):
            kname = lib.crt_emu_name(i).decode()
            kinds = lib.crt_emu_kinds(i).decode()
            if "?" in kinds:
                raise ValueError(
                    f"{self.source.name}: kernel {kname} has a parameter type the emulator cannot copy"
                )
            self.kernels[kname] = EmulatedKernel(i, kname, kinds)

    def run(
        self,
        kernel: str,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple[int | float, ...],
        argtypes: tuple[type, ...],
        shared_bytes: int = 0,
    ) -> None:
        """Run ``kernel`` at once with ``args`` packed as ``cuLaunchKernel``'s kernelParams (the same
        packing as :func:`crystal_rt.cuda.module.launch`); RuntimeError with the emulator's message."""
        if len(args) != len(argtypes) or len(argtypes) != len(self.kernels[kernel].kinds):
            raise RuntimeError(
                f"{kernel}: {len(args)} arguments for {len(self.kernels[kernel].kinds)} parameters"
            )
        holders = [t(a) for a, t in zip(args, argtypes, strict=True)]
        pointers = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
        g = (*grid, 1, 1)[:3]
        b = (*block, 1, 1)[:3]
        error = self.launch(self.kernels[kernel], g, b, shared_bytes, ctypes.addressof(pointers))  # type: ignore[arg-type]
        if error is not None:
            raise RuntimeError(f"{kernel}: {error}")

    def launch(
        self,
        kernel: EmulatedKernel,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_bytes: int,
        params: int,
    ) -> str | None:
        """Run ``kernel`` with the ``void**`` at address ``params``; None, or the emulator's error."""
        err = ctypes.create_string_buffer(256)
        rc = self._lib.crt_emu_launch(
            kernel.index, *grid, *block, shared_bytes, ctypes.c_void_p(params), err, len(err)
        )
        return None if rc == 0 else (err.value.decode(errors="replace") or f"launch failed ({rc})")


_MODULES: dict[tuple[str, tuple[str, ...]], EmulatedModule] = {}
_LOCK = threading.Lock()


def emulated_module(name: str, extra_flags: tuple[str, ...] = ()) -> EmulatedModule:
    """The emulator build of ``kernels/<name>.cu`` (compiled once per process, cached on disk)."""
    key = (name, tuple(extra_flags))
    with _LOCK:
        if key not in _MODULES:
            _MODULES[key] = EmulatedModule(name, key[1])
        return _MODULES[key]


def module_for_image(image: bytes) -> str | None:
    """Which of crystal-rt's kernel files a CUBIN (ELF) or PTX image was compiled from: the one whose
    every kernel name appears in the image's symbol names; None when none does."""
    for name in kernel_names():
        kernels = kernels_in(KERNEL_DIR / f"{name}.cu")
        if kernels and all(_names_symbol(image, k) for k in kernels):
            return name
    return None


def _names_symbol(image: bytes, kernel: str) -> bool:
    token = kernel.encode()
    return b"\0" + token + b"\0" in image or b".entry " + token in image
