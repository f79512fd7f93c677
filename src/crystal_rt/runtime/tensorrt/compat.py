"""Check an engine's manifest against this machine before TensorRT sees the plan.

A plan runs only on the TensorRT version that built it (or, built ``--version-compatible``, a
later one of the same major, or TensorRT 11 for a TensorRT 10 plan) and on the compute capability
it was built for (or any Ampere-or-newer desktop/server GPU when built ``--hardware-compat
ampere+``; never Jetson). The facts about this machine come from
:mod:`crystal_rt.runtime.tensorrt.device`, which tests monkeypatch.
"""

from __future__ import annotations

from ...errors import BackendUnavailable, EngineIncompatible, MissingDependency
from ..artifacts import Manifest
from . import device

#: Jetson (integrated) compute capabilities: hardware-compatible plans do not run there.
JETSON_CCS = ("7.2", "8.7", "11.0")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


#: (built major, runtime major) pairs TensorRT runs a version-compatible plan across (TensorRT 11's
#: support matrix: 10 -> 11 and 8 -> 10; within a major, any later runtime)
CROSS_MAJOR = {(10, 11), (8, 10)}


def version_ok(built: str, here: str, version_compatible: bool) -> bool:
    if built == here:
        return True
    if not version_compatible:
        return False
    b, h = _version_tuple(built), _version_tuple(here)
    if h < b or b < (8, 6):  # never on an older runtime; version compatibility began with 8.6
        return False
    return b[:1] == h[:1] or (b[0], h[0]) in CROSS_MAJOR


def cc_ok(built: str | None, here: str, hardware_compat: str) -> bool:
    if built == here:
        return True
    if hardware_compat == "ampere+":
        return here not in JETSON_CCS and _version_tuple(here) >= (8, 0)
    return False


def check_manifest(manifest: Manifest) -> None:
    """Refuse, in one sentence with the rebuild command, a plan this machine cannot run."""
    if manifest.backend != "tensorrt":
        raise EngineIncompatible(
            f"this is a {manifest.backend} engine, not a TensorRT plan for this runtime; "
            f"{manifest.rebuild_hint()}",
            path=manifest.path,
        )
    here = device.tensorrt_version()
    if here is None:
        raise MissingDependency(
            "tensorrt", "gpu", "Running a TensorRT engine", " plus NVIDIA TensorRT for this GPU"
        )
    options = manifest.build_options
    built_where = (
        f"TensorRT {manifest.backend_version} for compute capability {manifest.compute_capability}"
        + (f" ({manifest.gpu_name})" if manifest.gpu_name else "")
    )
    if not version_ok(manifest.backend_version, here, bool(options.get("version_compatible"))):
        raise EngineIncompatible(
            f"this engine was built with {built_where}, this machine has TensorRT {here}; "
            f"{manifest.rebuild_hint()}",
            path=manifest.path,
        )
    cc = device.compute_capability()
    if cc is None:
        raise BackendUnavailable(
            "running a TensorRT engine needs an NVIDIA GPU and driver; none was found", path=manifest.path
        )
    if not cc_ok(manifest.compute_capability, cc, str(options.get("hardware_compat", "none"))):
        raise EngineIncompatible(
            f"this engine was built with {built_where}, this GPU has compute capability {cc}; "
            f"{manifest.rebuild_hint()}",
            path=manifest.path,
        )
