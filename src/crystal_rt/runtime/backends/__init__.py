"""Inference backends behind one interface: ``infer(images) -> CoreOutputs``."""

__all__: list[str] = []
