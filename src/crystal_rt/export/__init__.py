"""Checkpoint -> core ONNX: ``api.export_checkpoint`` (what ``crystal-rt export`` runs), ``onnx_export``
(tracing, metadata, validation against PyTorch), ``lint`` (TensorRT's parser rules), ``options``."""

__all__: list[str] = []
