"""Weights back from a core ONNX: its initializers into the torchvision Mask R-CNN it was exported from.

``crystal-rt export`` traces the model with ``torch.onnx.export(dynamo=False)``, which keeps the
state_dict names of the tensors it does not change. The backbone's frozen batch norms are not:
constant folding turns each into ``Conv -> Mul(scale) -> Add(shift)`` with unnamed constants
(``onnx::Mul_N``, ``onnx::Add_N``), where scale = weight / sqrt(var + eps) and shift = bias -
mean * scale. A batch norm with weight = scale, bias = shift, running mean 0 and running variance
1 - eps computes the same, so the model has the graph's outputs and is ready to be fine-tuned (the
class-specific predictors are re-initialised when the class count differs, as for any
checkpoint). A convolution with the batch norm folded into its bias (fused graphs) is read too,
and so is a tensor the exporter stored once for several (equal constants, e.g. zero biases, become
``Identity`` nodes of the first).

An engine folder works too: its manifest names the core ONNX it was built from (and its SHA-256),
which is read instead (an optimised graph or a plan no longer carries the model's names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_import, require
from ..errors import InvalidModel
from ..runtime.artifacts import Manifest, resolve_manifest, sha256_file
from ..spec import MODEL_METADATA_KEY

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
else:
    np = lazy_import("numpy", "Array processing")
    torch = lazy_import("torch", "PyTorch models", extra="export")

__all__ = ["is_onnx_source", "onnx_model_info", "onnx_path", "onnx_state_dict"]

_CONV_OPS = ("Conv", "FusedConv")


def is_onnx_source(path: str | os.PathLike[str]) -> bool:
    """An ONNX file or an engine folder (rather than a PyTorch checkpoint)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() == ".onnx" or p.name.endswith(".manifest.json")


def onnx_path(path: str | os.PathLike[str]) -> Path:
    """The ONNX graph behind ``path``: the file itself, or the core ONNX an engine was built from
    (its manifest names it and its SHA-256; engines themselves are optimised graphs or plans whose
    tensors no longer carry the model's names)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".onnx":
        return p
    manifest = Manifest.read(resolve_manifest(p))
    source = Path(manifest.source_onnx)
    if not source.is_file() or sha256_file(source) != manifest.source_onnx_sha256:
        raise InvalidModel(
            f"the core ONNX this engine was built from ({source}) is gone or changed; pass that ONNX "
            "(or the checkpoint) to take weights from",
            path=p,
        )
    return source


def _load(path: Path) -> Any:
    onnx = require("onnx", "Reading weights from an ONNX graph")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and others for a file that is not ONNX
        raise InvalidModel(f"not a readable ONNX graph ({type(exc).__name__})", path=path) from exc


def onnx_model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The graph's ``crystal_rt.model`` metadata (arch, class names, ...), {} when it has none, and
    ``slim`` (True when its backbone is the demo model's: no ResNet layer4, a 128-wide FPN)."""
    graph_path = onnx_path(path)
    model = _load(graph_path)
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        info: dict[str, Any] = dict(json.loads(meta.get(MODEL_METADATA_KEY, "{}")))
    except (ValueError, TypeError) as exc:
        raise InvalidModel(f"unreadable {MODEL_METADATA_KEY} metadata", path=graph_path) from exc
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    inner = shapes.get("backbone.fpn.inner_blocks.0.0.weight") or shapes.get(
        "backbone.fpn.inner_blocks.0.weight"
    )
    has_layer4 = any(name.startswith("backbone.body.layer4.") for name in shapes)
    info["slim"] = bool(inner and inner[0] == 128 and not has_layer4)
    return info


def _bn_for(conv: str) -> str | None:
    """The batch norm that follows a torchvision ResNet convolution (conv1 -> bn1, downsample.0 -> .1)."""
    parts = conv.split(".")
    if parts[-1].startswith("conv"):
        parts[-1] = "bn" + parts[-1][4:]
    elif parts[-1] == "0" and len(parts) > 1 and parts[-2] == "downsample":
        parts[-1] = "1"
    else:
        return None
    return ".".join(parts)


def onnx_state_dict(path: str | os.PathLike[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state_dict for ``model`` from the graph's initializers: every tensor stored under its own
    name, and for each folded convolution the identity batch norm carrying the folded bias."""
    onnx = require("onnx", "Reading weights from an ONNX graph")
    graph_path = onnx_path(path)
    graph = _load(graph_path).graph
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    target = model.state_dict()
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {
        name: torch.from_numpy(np.array(value)) for name, value in arrays.items() if name in target
    }
    for node in graph.node:  # equal constants are stored once, the others as Identity nodes of it
        if node.op_type == "Identity" and node.output[0] in target and node.input[0] in arrays:
            value = torch.from_numpy(np.array(arrays[node.input[0]]))
            if value.shape == target[node.output[0]].shape:
                out[node.output[0]] = value
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant_partner(output: str, kind: str) -> tuple[str, Any] | None:
        """The (output, constant) of the single ``kind`` node that takes ``output`` and a constant."""
        users = consumers.get(output, [])
        if len(users) != 1 or users[0].op_type != kind:
            return None
        constants = [name for name in users[0].input if name in arrays and name not in target]
        return (users[0].output[0], arrays[constants[0]]) if len(constants) == 1 else None

    for node in graph.node:
        if node.op_type not in _CONV_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        bn = _bn_for(weight.removesuffix(".weight")) if weight in target else None
        if bn is None or f"{bn}.bias" not in target:
            continue
        eps = float(getattr(modules.get(bn), "eps", 1e-5))
        if len(node.input) >= 3 and node.input[2] in arrays and node.input[2] not in target:
            scale, shift = None, arrays[node.input[2]]  # folded into the convolution (fused graphs)
        else:
            mul = constant_partner(node.output[0], "Mul")
            add = constant_partner(mul[0], "Add") if mul else None
            if mul is None or add is None:
                continue
            scale, shift = mul[1], add[1]
        shift_t = torch.from_numpy(np.array(shift, dtype=np.float32)).reshape(-1)
        scale_t = (
            torch.ones_like(shift_t)
            if scale is None
            else torch.from_numpy(np.array(scale, dtype=np.float32)).reshape(-1)
        )
        # FrozenBatchNorm2d: y = x * weight / sqrt(var + eps) + (bias - mean * that); var = 1 - eps
        out[f"{bn}.weight"] = scale_t
        out[f"{bn}.bias"] = shift_t
        out[f"{bn}.running_mean"] = torch.zeros_like(shift_t)
        out[f"{bn}.running_var"] = torch.full_like(shift_t, 1.0 - eps)
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    found = sum(k in out for k in wanted)
    if found < 0.9 * len(wanted):
        raise InvalidModel(
            f"only {found} of this model's {len(wanted)} tensors are in the graph: not a core ONNX of "
            "this architecture (crystal-rt export writes one)",
            path=graph_path,
        )
    return out
