"""Fine-tuning a torchvision Mask R-CNN on a COCO dataset (needs the ``train`` extra: torch).

``data`` caches each training image exactly as the engine will see it (CLAHE per the
PreprocessSpec, letterbox scale) and ``augment`` samples crops from that cache; ``weights``
initialises from a local checkpoint or torchvision weights file; ``loop`` runs the optimisation
with periodic validation mAP, checkpoints and resume.
"""

__all__: list[str] = []
