"""A replica of CHiMP's detector (DiamondLightSource/xchem-chimp, src/xchem_chimp/detector/), written
from its source for crystal-rt's tests and benchmarks: the reference ``--preset chimp`` must
reproduce (needs torch and torchvision).

Per image (chimp_detector.py, detector_dataset.py, coord_generator.py, detector_utils.py):
cv2.imread -> RGB; albumentations Resize(1352, 1688) (cv2.resize INTER_LINEAR); albumentations
CLAHE(tile_grid_size=(12, 12)) on L of LAB (clip drawn in [1, 4] by CHiMP; fixed here); ToTensorV2
(uint8 CHW); (img - min) / float(max - min); the torchvision model with its own transform; scores
>= 0.6; masks > 0.5 at 1352 x 1688; points and the Echo target scaled by original / 1352x1688.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .._lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch", "PyTorch models", extra="export")


def seeded_chimp_model(seed: int = 0) -> Any:
    """CHiMP's architecture (torchvision ``maskrcnn_resnet50_fpn`` with ``FastRCNNPredictor(1024, 3)``
    and ``MaskRCNNPredictor(256, 256, 3)``), seeded, no weights downloaded. Its box regressions (RPN
    and box head) are scaled down 10x so that boxes stay near their anchors, sized as a trained
    model's are, instead of random-weight slivers under a pixel wide; everything else is random."""
    import torchvision
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    torch.manual_seed(seed)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, 3)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 3)
    with torch.no_grad():
        for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.mul_(0.1)
            layer.bias.mul_(0.1)
    return model.eval()


@dataclass
class ChimpDetection:
    label: int
    score: float
    box: tuple[float, float, float, float]  # original pixels
    mask: np.ndarray  # bool, original resolution


@dataclass
class ChimpResult:
    detections: list[ChimpDetection]
    echo: tuple[int, int] | None  # (y, x) original pixels, CHiMP's order


def chimp_replica(model: Any, path: str, clip_limit: float = 2.5, prob_threshold: float = 0.6) -> ChimpResult:
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(f"cv2.imread cannot read {path}")
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    orig_h, orig_w = img.shape[:2]
    img = cv2.resize(img, (1688, 1352), interpolation=cv2.INTER_LINEAR)  # albumentations Resize
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)  # albumentations CLAHE
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(12, 12)).apply(lab[:, :, 0])
    img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    tensor = torch.from_numpy(img).permute(2, 0, 1)  # ToTensorV2
    i_range = tensor.max() - tensor.min()
    tensor = (tensor - tensor.min()) / float(i_range)
    with torch.no_grad():
        pred = model([tensor])[0]
    scores = pred["scores"].numpy()
    labels = pred["labels"].numpy()
    keep = np.where(scores >= prob_threshold)[0]
    new_h, new_w = 1352, 1688
    fy, fx = orig_h / new_h, orig_w / new_w
    dets = []
    for i in keep:
        x1, y1, x2, y2 = (float(v) for v in pred["boxes"][i])
        mask = pred["masks"][i, 0].numpy() > 0.5
        full = cv2.resize(mask.astype(np.uint8), (orig_w, orig_h), interpolation=cv2.INTER_NEAREST) > 0
        dets.append(
            ChimpDetection(int(labels[i]), float(scores[i]), (x1 * fx, y1 * fy, x2 * fx, y2 * fy), full)
        )
    # the Echo target (coord_generator.extract_coordinates with extract_echo): the first (best) drop
    # over the threshold, minus every crystal mask over it; the maximum of the distance transform
    drops = [i for i in keep if labels[i] == 1]
    echo = None
    if drops:
        drop = (pred["masks"][drops[0], 0].numpy() > 0.5).astype(np.uint8)
        crystals = [i for i in keep if labels[i] == 2]
        for i in crystals:
            xtal = (pred["masks"][i, 0].numpy() > 0.5).astype(np.uint8)
            drop = drop - xtal.clip(None, drop)
        if crystals:  # scipy.ndimage.distance_transform_edt (outside the array is not background), argmax:
            # OpenCV's precise L2 is the same exact EDT and treats outside the image alike
            dist = cv2.distanceTransform(drop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            y, x = np.unravel_index(np.argmax(dist), dist.shape)
        else:  # scipy.ndimage.center_of_mass
            ys, xs = np.nonzero(drop)
            y, x = ys.mean(), xs.mean()
        echo = (int(np.rint(y * fy)), int(np.rint(x * fx)))
    return ChimpResult(dets, echo)
