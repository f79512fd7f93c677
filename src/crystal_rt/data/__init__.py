"""Annotation datasets: COCO (``coco``, ``builder``, ``segmentation``, ``fields``), Labelme (``labelme``),
mask folders (``mask_folders``), conversion (``convert``) and the synthetic drop generator
(``synthetic``, ``synth_writer``)."""

__all__: list[str] = []
