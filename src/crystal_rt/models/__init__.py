"""The torch model code: torchvision Mask R-CNN builders and checkpoints (``maskrcnn``), the core graph
that is exported (``core``), its eager backend and the reference Detector. The runtime never imports
this package (it runs engines without torch)."""

__all__: list[str] = []
