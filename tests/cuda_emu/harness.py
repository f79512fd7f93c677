"""The package's CUDA CPU emulator (crystal_rt.testing.emulator) for these tests: a missing C++20
compiler skips the calling test instead of failing it."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import pytest

from crystal_rt.testing.emulator import build as _build
from crystal_rt.testing.emulator.build import EMU_DIR, EMU_HEADER, EmulatorUnavailable
from crystal_rt.testing.emulator.kernels import EmulatedModule, emulated_module

__all__ = ["EMU_DIR", "EMU_HEADER", "build_executable", "build_library", "emulated_module_or_skip"]


def emulated_module_or_skip(name: str, extra_flags: tuple[str, ...] = ()) -> EmulatedModule:
    """``kernels/<name>.cu`` built for the emulator (skips without a C++20 compiler)."""
    try:
        return emulated_module(name, extra_flags)
    except EmulatorUnavailable as exc:
        if "needs a C++20 compiler" in exc.message:
            pytest.skip(exc.message)
        raise


def build_library(sources: Sequence[Path], wrapper_cpp: str, name: str, *, tsan: bool = False) -> ctypes.CDLL:
    try:
        return _build.build_library(sources, wrapper_cpp, name, tsan=tsan)
    except EmulatorUnavailable as exc:
        if "needs a C++20 compiler" in exc.message:
            pytest.skip(exc.message)
        raise


def build_executable(sources: Sequence[Path], main_cpp: str, name: str, *, tsan: bool = False) -> Path:
    try:
        return _build.build_executable(sources, main_cpp, name, tsan=tsan)
    except EmulatorUnavailable as exc:
        if "needs a C++20 compiler" in exc.message:
            pytest.skip(exc.message)
        raise
