"""A replica of CHiMP's detector (DiamondLightSource/xchem-chimp, src/xchem_chimp/detector/), written
from its source for crystal-rt's tests: the reference `--preset chimp` must reproduce.

Per image (chimp_detector.py, detector_dataset.py, coord_generator.py, detector_utils.py):
cv2.imread -> RGB; albumentations Resize(1352, 1688) (cv2.resize INTER_LINEAR); albumentations
CLAHE(tile_grid_size=(12, 12)) on L of LAB (clip drawn in [1, 4] by CHiMP; fixed here); ToTensorV2
(uint8 CHW); (img - min) / float(max - min); the torchvision model with its own transform; scores
>= 0.6; masks > 0.5 at 1352 x 1688; points and the Echo target scaled by original / 1352x1688.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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


def chimp_replica(model, path: str, clip_limit: float = 2.5, prob_threshold: float = 0.6) -> ChimpResult:
    import torch

    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    orig_h, orig_w = img.shape[:2]
    img = cv2.resize(img, (1688, 1352), interpolation=cv2.INTER_LINEAR)  # albumentations Resize
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)  # albumentations CLAHE
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(12, 12)).apply(lab[:, :, 0])
    img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    x = torch.from_numpy(img).permute(2, 0, 1)  # ToTensorV2
    i_range = x.max() - x.min()
    x = (x - x.min()) / float(i_range)
    with torch.no_grad():
        pred = model([x])[0]
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
        if crystals:  # scipy.ndimage.distance_transform_edt, argmax (OpenCV's precise L2 is the exact EDT)
            dist = cv2.distanceTransform(np.pad(drop, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
            y, x = np.unravel_index(np.argmax(dist), dist.shape)
        else:  # scipy.ndimage.center_of_mass
            ys, xs = np.nonzero(drop)
            y, x = ys.mean(), xs.mean()
        echo = (int(np.rint(y * fy)), int(np.rint(x * fx)))
    return ChimpResult(dets, echo)
