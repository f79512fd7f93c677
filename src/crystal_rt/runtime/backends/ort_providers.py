"""ONNX Runtime's GPU execution providers: which ones really load here, and why not.

``get_available_providers()`` lists what the installed wheel was built with, not what loads: the CUDA
provider of ``onnxruntime-gpu`` loads its shared library at session creation and, when a dependency
such as cuDNN or cuBLAS is missing, ONNX Runtime logs the loader's error and **silently falls back to
the CPU**. ``probe(provider)`` creates a one-node session with the provider, checks that the session
really uses it, and returns the loader's complaint (the missing library named) otherwise.
``session(...)`` creates a session and refuses, in one sentence, one that fell back.

The ``gpu-cu*`` extras install CUDA and cuDNN as pip wheels (``onnxruntime-gpu[cuda,cudnn]``), which
the dynamic loader does not search: ONNX Runtime (>= 1.21) finds them only after
``onnxruntime.preload_dlls()``, which nothing calls for you (microsoft/onnxruntime#25609). Before the
first GPU session of a process :func:`preload` calls it once, and keeps the libraries it could not load
to name them if a provider still fails.

All ONNX Runtime access for the GPU providers goes through :func:`crystal_rt.cuda.binding.onnxruntime_gpu`,
where the simulated GPU puts its stand-in.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

from ...cuda.binding import onnxruntime_gpu
from ...errors import BackendUnavailable, InvalidModel

CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
#: crystal-rt backend name -> the ONNX Runtime provider it runs on
PROVIDER_OF = {"onnxruntime-cuda": CUDA_EP, "onnxruntime-trt": TRT_EP}

_MISSING_LIB = re.compile(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object file")
#: what ``preload_dlls`` prints for a library it could not load (it prints, it does not raise)
_PRELOAD_FAILED = re.compile(r"Failed to load (\S+?):? ")

#: onnxruntime module -> the lines preload_dlls printed (once per module: the simulated GPU has its own)
_PRELOADED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _ort() -> Any:
    return onnxruntime_gpu()


def preload(ort: Any) -> str:
    """Call ``ort.preload_dlls()`` once for this onnxruntime module (before its first GPU session) so the
    pip wheels' CUDA and cuDNN libraries are found; returns what it printed ("" where it printed
    nothing, or where this onnxruntime is older than 1.21 and has no ``preload_dlls``)."""
    if ort in _PRELOADED:
        return _PRELOADED[ort]
    printed = ""
    function = getattr(ort, "preload_dlls", None)
    if callable(function):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            made, log = _capture_stderr(function)
        printed = out.getvalue() + log + (f"{made}\n" if isinstance(made, Exception) else "")
    _PRELOADED[ort] = printed
    return printed


def _tiny_model() -> bytes:
    """A one-node float graph (Identity), serialized without the onnx package."""

    # ModelProto: ir_version 8, opset 17, graph { node Identity x->y; input x float [1]; output y float [1] }
    def field(num: int, wire: int, payload: bytes) -> bytes:
        return _varint(num << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)

    def tensor_type() -> bytes:  # TypeProto{tensor_type{elem_type FLOAT, shape{dim{dim_value 1}}}}
        dim = field(1, 2, field(1, 0, _varint(1)))
        shape = field(2, 2, dim)
        return field(1, 2, field(1, 0, _varint(1)) + shape)

    def value_info(name: bytes) -> bytes:
        return field(1, 2, name) + field(2, 2, tensor_type())

    node = field(1, 2, b"x") + field(2, 2, b"y") + field(4, 2, b"Identity")
    graph = (
        field(1, 2, node)
        + field(2, 2, b"probe")
        + field(11, 2, value_info(b"x"))
        + field(12, 2, value_info(b"y"))
    )
    opset = field(1, 2, b"") + field(2, 0, _varint(17))
    return field(1, 0, _varint(8)) + field(7, 2, graph) + field(8, 2, opset)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _capture_stderr(fn: Any) -> tuple[Any, str]:
    """Run ``fn`` with file descriptor 2 sent to a temporary file (ONNX Runtime logs from C++)."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                result = fn()
            except Exception as exc:  # ONNX Runtime raises its own pybind types
                result = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read().decode(errors="replace")


def _reason(provider: str, log: str, error: Exception | None = None, preloaded: str = "") -> str:
    missing = _MISSING_LIB.findall(log) or _PRELOAD_FAILED.findall(preloaded)
    if missing:
        extra = "gpu-cu12" if any(".so.12" in m or "cu12" in m for m in missing) else "gpu-cu13"
        return (
            f"{provider} cannot load: {missing[0]} is missing (install the CUDA and cuDNN libraries for this "
            f'onnxruntime-gpu, e.g. pip install "crystal-rt[{extra}]")'
        )
    if error is not None:
        return f"{provider} cannot load: {str(error).strip().splitlines()[0][:200]}"
    last = [ln for ln in log.strip().splitlines() if ln.strip()]
    detail = f" ({last[-1].strip()[:200]})" if last else ""
    return f"{provider} did not load; ONNX Runtime fell back to the CPU{detail}"


_PROBED: weakref.WeakKeyDictionary[Any, dict[str, tuple[bool, str]]] = weakref.WeakKeyDictionary()


def probe(provider: str) -> tuple[bool, str]:
    """(loads, why not) for an ONNX Runtime execution provider on this machine (asked once per
    onnxruntime module: the simulated GPU brings its own)."""
    try:
        ort = _ort()
    except Exception as exc:  # MissingDependency: no onnxruntime at all
        return False, str(exc)
    known = _PROBED.setdefault(ort, {})
    if provider not in known:
        known[provider] = _probe(ort, provider)
    return known[provider]


def _probe(ort: Any, provider: str) -> tuple[bool, str]:
    if provider not in ort.get_available_providers():
        version = getattr(ort, "__version__", "?")
        return False, (
            f"this onnxruntime ({version}) has no {provider}: install onnxruntime-gpu instead of "
            'onnxruntime (pip install "crystal-rt[gpu-cu13]", or gpu-cu12 for a CUDA 12 driver)'
        )
    preloaded = preload(ort)
    model = _tiny_model()

    def make() -> Any:
        return ort.InferenceSession(model, providers=[provider, "CPUExecutionProvider"])

    made, log = _capture_stderr(make)
    if isinstance(made, Exception):
        return False, _reason(provider, log, made, preloaded)
    if provider not in made.get_providers():
        return False, _reason(provider, log, preloaded=preloaded)
    return True, f"{provider} loads"


def session(
    path: str | os.PathLike[str], options: Any, providers: Sequence[tuple[str, dict[str, str]]], what: str
) -> Any:
    """An InferenceSession that really runs on ``providers[0]``, else one sentence saying why not."""

    ort = _ort()
    wanted = providers[0][0]
    preloaded = preload(ort)

    def make() -> Any:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=[*providers, "CPUExecutionProvider"]
        )

    made, log = _capture_stderr(make)
    if isinstance(made, Exception):
        text = str(made).strip().splitlines()[0] if str(made).strip() else type(made).__name__
        if _MISSING_LIB.search(log) or "provider" in text.lower():
            raise BackendUnavailable(f"{what}: {_reason(wanted, log, made, preloaded)}", path=path) from made
        raise InvalidModel(f"ONNX Runtime cannot load this model: {text[:300]}", path=path) from made
    if wanted not in made.get_providers():
        raise BackendUnavailable(f"{what}: {_reason(wanted, log, preloaded=preloaded)}", path=path)
    return made


def available() -> dict[str, tuple[bool, str]]:
    """Every GPU provider with whether it loads here (for doctor and --backend auto)."""
    return {name: probe(name) for name in (TRT_EP, CUDA_EP)}
