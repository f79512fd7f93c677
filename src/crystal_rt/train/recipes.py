"""Training recipes (``crystal-rt train --recipe``): values that differ from TrainConfig's defaults.

Light on purpose: the command line reads the names for ``--help``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES"]

#: Training recipes: values that differ from TrainConfig's defaults ("default": none).
#: "finetune" adapts a trained model to a handful of annotated images on a laptop: the backbone
#: frozen, a low learning rate, heavy augmentation (free rotation, crops from half to twice the
#: engine scale, focus blur, stronger brightness/contrast, a fifth of the crops without CLAHE), a
#: quarter of the images held out, early stopping, a 10-minute limit, and as best.pt's operating
#: threshold the best-F1 one on the held-out images.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "finetune": {
        "iterations": 600,
        "batch_size": 4,
        "lr": 0.005,
        "warmup": 20,
        "val_every": 50,
        "val_fraction": 0.25,
        "patience": 4,
        "max_minutes": 10.0,
        "freeze_backbone": True,
        "pick_threshold": True,
        "scale_range": (0.5, 2.0),
        "rotate": 180.0,
        "blur": 0.3,
        "clahe_off": 0.2,
        "brightness": 0.15,
        "contrast": (0.6, 1.5),
    },
}
