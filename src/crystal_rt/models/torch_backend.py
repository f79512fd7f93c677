"""The PyTorch reference backend: the same core module that was exported, run eagerly.

It sees exactly the same preprocessed input and feeds the same postprocessing as every other
backend, so any backend can be compared with it (``crystal-rt compare``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runtime.backends.base import Backend, CoreOutputs

if TYPE_CHECKING:
    from .core import CoreMaskRCNN


from .._lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch", "PyTorch models", extra="export")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, core: CoreMaskRCNN) -> None:
        self.core = core.eval()

    def infer(self, images: np.ndarray) -> CoreOutputs:
        from .core import run_core

        boxes, scores, labels, masks = run_core(self.core, torch.from_numpy(images))
        return CoreOutputs(boxes.numpy(), scores.numpy(), labels.numpy(), masks.numpy())
