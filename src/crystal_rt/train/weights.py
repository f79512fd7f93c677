"""Initial weights from local files only: a crystal-rt checkpoint, a torchvision detection
state_dict (e.g. ``maskrcnn_resnet50_fpn_coco-*.pth``) or an ImageNet backbone state_dict
(e.g. ``resnet18-*.pth``), or a core ONNX / ONNX Runtime engine folder (``onnx_weights.py``:
the shipped model fine-tunes from ``crystals.onnx``). Tensors whose shapes do not fit (the
class-specific heads when the class count differs) are skipped and counted; nothing is ever
downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_import
from ..errors import InvalidModel
from ..models.maskrcnn import read_torch_file
from .onnx_weights import is_onnx_source, onnx_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    nn = lazy_import("torch.nn", "PyTorch models", extra="export")
    torch = lazy_import("torch", "PyTorch models", extra="export")


@dataclass(frozen=True)
class InitReport:
    path: str
    loaded: int  # tensors copied into the model
    skipped: int  # tensors in the file that do not fit (shape or name)
    total: int  # tensors in the model
    backbone_only: bool

    def describe(self) -> str:
        kind = "backbone weights" if self.backbone_only else "weights"
        return f"initialised {self.loaded}/{self.total} tensors from {kind} in {self.path}" + (
            f" ({self.skipped} in the file did not fit and were skipped)" if self.skipped else ""
        )


def _state_dict(payload: Any, path: Path) -> dict[str, Any]:
    if isinstance(payload, dict) and payload.get("format") == "crystal-rt-checkpoint":
        payload = payload.get("state_dict")
    elif isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload:
        raise InvalidModel("no state_dict found in the file", path=path)
    return payload


def load_initial_weights(model: nn.Module, path: str | os.PathLike[str]) -> InitReport:
    """Copy every tensor of ``path`` that fits into ``model``; refuse a file where almost none fit."""

    path = Path(path)
    if is_onnx_source(path):
        source: dict[str, Any] = dict(onnx_state_dict(path, model))
    else:
        source = _state_dict(read_torch_file(path, "initial weights file"), path)
    target = model.state_dict()
    backbone_only = not any(str(k).startswith(("backbone.", "rpn.", "roi_heads.")) for k in source)
    update: dict[str, Any] = {}
    skipped = 0
    for key, tensor in source.items():
        if not isinstance(tensor, torch.Tensor) or str(key).endswith("num_batches_tracked"):
            continue
        candidates = [str(key)]
        if backbone_only:
            candidates = [f"backbone.body.{key}", f"backbone.body.{str(key).removeprefix('features.')}"]
        name = next((c for c in candidates if c in target and target[c].shape == tensor.shape), None)
        if name is None:
            skipped += 1
        else:
            update[name] = tensor
    if len(update) < 0.25 * (len(update) + skipped) or not update:
        raise InvalidModel(
            f"only {len(update)} of {len(update) + skipped} tensors fit this architecture; "
            "is it weights for another backbone?",
            path=path,
        )
    model.load_state_dict(update, strict=False)
    return InitReport(str(path), len(update), skipped, len(target), backbone_only)


def use_batch_norm(model: nn.Module) -> int:
    """Swap the backbone's FrozenBatchNorm2d for trainable BatchNorm2d (for training from scratch).

    The buffers keep their names, so the trained state_dict loads back into the standard
    (frozen) architecture for export. Returns the number of layers swapped.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.shape[0], eps=child.eps)
                with torch.no_grad():
                    bn.weight.copy_(child.weight)
                    bn.bias.copy_(child.bias)
                    bn.get_buffer("running_mean").copy_(child.running_mean)
                    bn.get_buffer("running_var").copy_(child.running_var)
                setattr(parent, name, bn)
                swapped += 1
    return swapped
