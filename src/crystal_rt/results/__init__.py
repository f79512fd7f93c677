"""Result types, at the base of the package (they import nothing of crystal-rt's but each other):
instances with their crop-local masks and COCO RLE, the per-image result, the dispense target."""

from .detection import DetectionResult, Instance, InstanceMask
from .dispense import DROP_CLASS, DispenseTarget, dispense_target, has_drop_class

__all__ = [
    "DROP_CLASS",
    "DetectionResult",
    "DispenseTarget",
    "Instance",
    "InstanceMask",
    "dispense_target",
    "has_drop_class",
]
