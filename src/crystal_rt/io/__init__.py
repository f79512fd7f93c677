"""Image decoding and result writers."""

RESULT_FORMATS = ("json", "coco", "csv", "overlay")
