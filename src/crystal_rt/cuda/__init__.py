"""CUDA kernels (``kernels/*.cu``), their NVRTC build (``build.py``) and everything that runs them:
``binding`` (the cuda-python seam the simulated GPU replaces), ``probe`` (is there a usable GPU),
``driver`` (checked driver calls, contexts, streams), ``memory`` (device and page-locked buffers),
``module`` (loaded kernels, launches), ``timing`` (CUDA events), ``launches`` (the launch arithmetic,
host only), ``clahe_plan``, ``preprocessor`` (the CLAHE/letterbox/paste launchers) and ``stages``
(the pipeline's device stages on one stream). Importing this package imports no GPU module."""

__all__: list[str] = []
