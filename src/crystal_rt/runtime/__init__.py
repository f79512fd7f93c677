"""Running engines without torch: ``detector.Detector`` and its ``pipeline`` (bit depth, CLAHE, letterbox,
engine, select, paste, tiles), the CPU stages (``preprocess``, ``postprocess``), ``artifacts`` (the
manifest), ``backends`` (ONNX Runtime CPU/GPU, the device session) and ``tensorrt`` (the plan runner)."""

__all__: list[str] = []
