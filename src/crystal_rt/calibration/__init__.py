"""Lower-precision graphs from the core FP32 ONNX: INT8 (Q/DQ) and FP16, calibrated on the user's images.

Runs on the CPU. The INT8 graph is made for its target: ONNX Runtime's static quantization for
the CPU engine, NVIDIA ModelOpt's Q/DQ for TensorRT (see ``int8.py`` for why they differ).
"""

__all__: list[str] = []
