"""Building engines, above the runtime: ONNX Runtime CPU engines (``engine.py``, which also picks the
backend), ONNX Runtime GPU engines (``ort_gpu.py``), TensorRT plans (``tensorrt/``: options,
precision routes from the calibration record, the builder, the engine cache, build progress), and
the GPU acceptance checks of ``crystal-rt doctor --gpu`` (``gpucheck.py``). The runtime never
imports this package: it opens what was built."""

from .engine import BACKENDS, PRECISIONS, build_engine, choose_backend

__all__ = ["BACKENDS", "PRECISIONS", "build_engine", "choose_backend"]
