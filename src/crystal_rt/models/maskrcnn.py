"""Build torchvision Mask R-CNNs by architecture name and load checkpoints (ours or plain state_dicts).

Architectures: ``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2`` (torchvision's own builders)
and ``maskrcnn_<backbone>_fpn`` for any torchvision ResNet or MobileNet backbone
(``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``mobilenet_v2``, ``mobilenet_v3_large``,
``mobilenet_v3_small``). Weights are never downloaded: models are built with ``weights=None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModel
from ..spec import ModelSpec, PreprocessSpec

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

from .._lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    nn = lazy_import("torch.nn", "PyTorch models", extra="export")
    torch = lazy_import("torch", "PyTorch models", extra="export")


CHECKPOINT_FORMAT = "crystal-rt-checkpoint"
CHECKPOINT_VERSION = 1

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# Options (checkpoint model_kwargs) that make a ResNet-FPN model smaller and faster: the ResNet
# stages feeding the FPN, the FPN width, the box head's hidden size, the mask head's width, and one
# anchor size per FPN level (the max-pool level included). The demo model uses them.
SLIM_OPTIONS = ("returned_layers", "fpn_channels", "box_head_size", "mask_head_channels", "anchor_sizes")
ARCHS = (
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    *(f"maskrcnn_{b}_fpn" for b in RESNETS if b != "resnet50"),
    *(f"maskrcnn_{b}_fpn" for b in MOBILENETS),
)


@dataclass
class LoadedModel:
    """A torchvision Mask R-CNN in eval mode with the specs that travel with it."""

    model: MaskRCNN
    model_spec: ModelSpec
    preprocess: PreprocessSpec
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def build_maskrcnn(
    arch: str,
    num_classes: int,
    *,
    preprocess: PreprocessSpec | None = None,
    max_detections: int = 100,
    **kwargs: Any,
) -> MaskRCNN:
    """A Mask R-CNN with random weights; its own transform set to the spec's size and normalisation."""
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops import MultiScaleRoIAlign

    spec = preprocess or PreprocessSpec()
    transform = spec.transform  # the model's own transform, where the recipe keeps it; else a no-op one
    options: dict[str, Any] = {
        "min_size": transform.min_size if transform else min(spec.input_hw),
        "max_size": transform.max_size if transform else max(spec.input_hw),
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
        "box_detections_per_img": max_detections,
        **kwargs,
    }
    model: nn.Module
    if arch == "maskrcnn_resnet50_fpn":
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    elif arch == "maskrcnn_resnet50_fpn_v2":
        model = maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=num_classes, **options
        )
    elif arch.startswith("maskrcnn_") and arch.endswith("_fpn") and arch[9:-4] in RESNETS:
        custom = {k: options.pop(k) for k in SLIM_OPTIONS if k in options}
        if custom:
            model = _slim_resnet_maskrcnn(arch[9:-4], num_classes, custom, options)
        else:
            backbone = resnet_fpn_backbone(backbone_name=arch[9:-4], weights=None, trainable_layers=5)
            model = MaskRCNN(backbone, num_classes=num_classes, **options)
    elif arch.startswith("maskrcnn_") and arch.endswith("_fpn") and arch[9:-4] in MOBILENETS:
        backbone = mobilenet_backbone(backbone_name=arch[9:-4], weights=None, fpn=True, trainable_layers=6)
        levels = 3  # two feature maps + the FPN's pool level
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * levels, ((0.5, 1.0, 2.0),) * levels)
        model = MaskRCNN(
            backbone,
            num_classes=num_classes,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2),
            mask_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=14, sampling_ratio=2),
            **options,
        )
    else:
        raise InvalidModel(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return model.eval()  # type: ignore[return-value]


def _slim_resnet_maskrcnn(
    backbone_name: str, num_classes: int, custom: dict[str, Any], options: dict[str, Any]
) -> MaskRCNN:
    """A ResNet-FPN Mask R-CNN with chosen FPN levels, widths and anchor sizes (see SLIM_OPTIONS)."""
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    returned = [int(k) for k in custom.get("returned_layers", (1, 2, 3, 4))]
    if not returned or sorted(set(returned)) != returned or not all(1 <= k <= 4 for k in returned):
        raise InvalidModel(f"returned_layers must be increasing stage numbers in 1..4, not {returned}")
    channels = int(custom.get("fpn_channels", 256))
    box_size = int(custom.get("box_head_size", 1024))
    mask_channels = int(custom.get("mask_head_channels", 256))
    levels = len(returned) + 1  # plus the FPN's max-pool level
    sizes = [int(v) for v in custom.get("anchor_sizes", [32 * 2**i for i in range(levels)])]
    if len(sizes) != levels:
        raise InvalidModel(f"anchor_sizes needs {levels} sizes (one per FPN level), not {len(sizes)}")
    body = getattr(resnet, backbone_name)(weights=None, norm_layer=FrozenBatchNorm2d)
    top = body.inplanes  # channels of layer4: 512 (basic blocks) or 2048 (bottlenecks)
    backbone = BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=[top // 2 ** (4 - k) for k in returned],
        out_channels=channels,
    )
    names = [str(i) for i in range(len(returned))]
    anchors = AnchorGenerator(tuple((size,) for size in sizes), ((0.5, 1.0, 2.0),) * levels)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 49, box_size),
        box_predictor=FastRCNNPredictor(box_size, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        **options,
    )
    return model


def save_checkpoint(
    path: str | Path,
    model: MaskRCNN,
    model_spec: ModelSpec,
    preprocess: PreprocessSpec,
    extra: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write our checkpoint format: arch, classes, preprocess spec, builder options, state_dict.

    ``model_kwargs`` are the extra ``build_maskrcnn`` options the model was built with (e.g.
    ``rpn_post_nms_top_n_test``), so that loading rebuilds exactly the same model.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": model_spec.arch,
        "num_classes": model_spec.num_classes,
        "class_names": list(model_spec.class_names),
        "max_detections": model_spec.max_detections,
        "score_threshold": model_spec.score_threshold,
        "preprocess": preprocess.to_dict(),
        "model_kwargs": dict(model_kwargs or {}),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    torch.save(payload, path)
    return path


def read_torch_file(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (no pickled code), with one clear error."""

    if not path.is_file():
        raise InvalidModel(f"{what} not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise InvalidModel(
            f"not a PyTorch checkpoint that can be loaded safely ({type(exc).__name__}); "
            "save a state_dict or a crystal-rt checkpoint, not a pickled model",
            path=path,
        ) from exc


def _infer_num_classes(state_dict: dict[str, Any]) -> int | None:
    weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    return None if weight is None else int(weight.shape[0])


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    preprocess: PreprocessSpec | None = None,
    max_detections: int | None = None,
    score_threshold: float | None = None,
) -> LoadedModel:
    """Load our checkpoint format or a plain torchvision state_dict (then ``arch`` is required).

    Arguments given here override what the checkpoint stores.
    """
    path = Path(path)
    payload = read_torch_file(path, "checkpoint")
    if not isinstance(payload, dict):
        raise InvalidModel(
            f"expected a dict (state_dict or crystal-rt checkpoint), got {type(payload).__name__}", path=path
        )

    stored_pre: dict[str, Any] | None = None
    stored: dict[str, Any] = {}
    if payload.get("format") == CHECKPOINT_FORMAT:
        for key in ("arch", "num_classes", "state_dict"):
            if key not in payload:
                raise InvalidModel(f"crystal-rt checkpoint lacks the field {key!r}", path=path)
        state_dict = payload["state_dict"]
        stored = payload
        stored_pre = payload.get("preprocess")
    elif isinstance(payload.get("model"), dict):  # torchvision reference-scripts format
        state_dict = payload["model"]
    else:
        state_dict = payload
    if not all(isinstance(k, str) for k in state_dict):
        raise InvalidModel("the state_dict has non-string keys", path=path)

    arch = arch or stored.get("arch")
    if arch is None:
        raise InvalidModel("a plain state_dict needs --arch (one of: " + ", ".join(ARCHS) + ")", path=path)
    inferred = _infer_num_classes(state_dict)
    num_classes = num_classes or stored.get("num_classes") or inferred
    if num_classes is None:
        raise InvalidModel("cannot tell the number of classes: pass --num-classes", path=path)
    if inferred is not None and inferred != num_classes:
        raise InvalidModel(f"the weights have {inferred} classes, not {num_classes}", path=path)
    names = class_names or stored.get("class_names") or None
    pre = preprocess or (PreprocessSpec.from_dict(stored_pre) if stored_pre else PreprocessSpec())
    model_spec = ModelSpec(
        arch=arch,
        num_classes=int(num_classes),
        class_names=tuple(names) if names else (),
        max_detections=int(max_detections or stored.get("max_detections") or 100),
        score_threshold=float(
            score_threshold if score_threshold is not None else stored.get("score_threshold", 0.5)
        ),
    )
    model_kwargs = dict(stored.get("model_kwargs") or {})
    model = build_maskrcnn(
        arch, model_spec.num_classes, preprocess=pre, max_detections=model_spec.max_detections, **model_kwargs
    )
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise InvalidModel(f"weights do not fit {arch}: {first.strip()}", path=path) from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise InvalidModel(f"weights do not fit {arch}: " + "; ".join(detail), path=path)
    return LoadedModel(model=model.eval(), model_spec=model_spec, preprocess=pre, model_kwargs=model_kwargs)
