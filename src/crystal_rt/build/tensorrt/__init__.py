"""Building TensorRT plans: ``build.py`` (the engine and its manifest), on the shared builder in
``builder.py`` that drives TensorRT (``tensorrt``) and TensorRT for RTX (``tensorrt_rtx``, whose
builder runs without a GPU); ``options.py`` (trtexec-like options), ``precision.py`` (FP32 / FP16 /
INT8 routes from the graph's calibration record), ``cache.py`` (the engine cache), ``progress.py``.
Nothing imports ``tensorrt`` at module import time."""

from .options import BuildOptions

__all__ = ["BuildOptions"]
