"""Image decoding and result writers."""

__all__ = ["RESULT_FORMATS"]

RESULT_FORMATS = ("json", "coco", "csv", "overlay")
