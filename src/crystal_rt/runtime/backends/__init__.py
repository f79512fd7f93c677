"""Inference backends behind one interface: ``infer(images) -> CoreOutputs``."""
