"""The core graph: a torchvision Mask R-CNN without its transform, with fixed-size outputs.

``CoreMaskRCNN`` takes the already preprocessed ``images`` [1, 3, H, W] and returns K padded
detections: ``boxes`` [K, 4] (x1, y1, x2, y2 in network-input pixels), ``scores`` [K],
``labels`` [K] and ``masks`` [K, 28, 28] (probabilities of the predicted class). Padding rows
have score 0. There is no GeneralizedRCNNTransform (no input Resize, no normalisation) and no
mask pasting (no Loop). ``export_friendly_nms`` replaces torchvision's batched-NMS helper,
which is scripted while tracing and so exports an ``If``, with a branch-free equivalent, and
makes the RPN's TopK K a constant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

    from ..spec import PreprocessSpec

from ..geometry import CORE_INPUT, CORE_OUTPUTS

OUTPUT_NAMES = CORE_OUTPUTS  # the contract's names, defined once in geometry
INPUT_NAME = CORE_INPUT


def _batched_nms_branch_free(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's coordinate-offset batched NMS without the empty-input branch.

    The maximum is taken over the boxes plus a zero, so it is defined for zero boxes too.
    """
    from torchvision.ops import nms

    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    kept: Tensor = nms(boxes + offsets[:, None], scores, iou_threshold)
    return kept


def _topk_min_constant(input: Tensor, orig_kval: int, axis: int) -> int:
    """``min(k, n)`` as a Python int: with a fixed input size the RPN's TopK K is a constant.

    torchvision computes it in-graph (ReduceMin of a Concat) while tracing, and TensorRT's
    TopK needs a constant K.
    """
    return min(int(orig_kval), int(input.shape[axis]))


@contextmanager
def export_friendly_nms() -> Iterator[None]:
    """Patch torchvision for the core graph: branch-free batched NMS and constant RPN TopK K."""
    import torchvision.models.detection._utils as det_utils
    import torchvision.ops.boxes as box_ops

    originals = (box_ops.batched_nms, det_utils._topk_min)
    box_ops.batched_nms = _batched_nms_branch_free
    det_utils._topk_min = _topk_min_constant
    try:
        yield
    finally:
        box_ops.batched_nms, det_utils._topk_min = originals


class CoreMaskRCNN(nn.Module):
    """Backbone + RPN + RoI heads of a torchvision Mask R-CNN on a fixed input.

    ``image_hw`` is torchvision's ``image_sizes`` entry: the image inside the (zero-padded) input, to
    which proposals and boxes are clipped (the whole input for the paper recipe; what the model
    transform resized to, before its padding, for a recipe with one). ``input_hw`` is recorded for
    reference (an int S means S x S)."""

    def __init__(
        self,
        model: MaskRCNN,
        input_hw: int | tuple[int, int],
        max_detections: int,
        image_hw: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.roi_heads.detections_per_img = max_detections
        hw = (input_hw, input_hw) if isinstance(input_hw, int) else tuple(input_hw)
        self.input_hw: tuple[int, int] = (int(hw[0]), int(hw[1]))
        self.image_hw: tuple[int, int] = (
            self.input_hw if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        )
        self.max_detections = max_detections
        self.eval()

    @classmethod
    def for_recipe(cls, model: MaskRCNN, spec: PreprocessSpec, max_detections: int) -> CoreMaskRCNN:
        return cls(model, spec.input_hw, max_detections, spec.image_hw)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from torchvision.models.detection.image_list import ImageList

        image_list = ImageList(images, [self.image_hw])
        features = self.backbone(images)
        proposals, _ = self.rpn(image_list, features)
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        det = detections[0]
        k = self.max_detections
        # Concatenate K padding rows and keep the first K: no Pad of dynamic size. The final reshape
        # to constant dims makes every output shape static in the graph (TensorRT then needs no
        # output allocator; NonZero/NMS inside still keep the engine out of CUDA graphs).
        boxes = torch.cat([det["boxes"], det["boxes"].new_zeros((k, 4))])[:k].reshape(k, 4)
        scores = torch.cat([det["scores"], det["scores"].new_zeros((k,))])[:k].reshape(k)
        labels = torch.cat([det["labels"], det["labels"].new_zeros((k,))])[:k].reshape(k)
        masks = det["masks"][:, 0]
        m = masks.shape[-1]
        masks = torch.cat([masks, masks.new_zeros((k, m, m))])[:k].reshape(k, int(m), int(m))
        return boxes, scores, labels, masks


def run_core(core: CoreMaskRCNN, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the core module eagerly exactly as it is exported (same NMS helper)."""
    with torch.inference_mode(), export_friendly_nms():
        out: tuple[Tensor, Tensor, Tensor, Tensor] = core(images)
        return out
