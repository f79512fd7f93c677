"""Accuracy and parity: ``metrics.evaluate`` (the paper's mAP@0.50/0.65, COCO AP, precision/recall) composed
from ``truth``, ``matching``, ``ap``, ``coco_ap``, ``report`` and ``plot``; ``parity`` (two detectors
against each other) and ``run`` (a detector on a dataset)."""

__all__: list[str] = []
