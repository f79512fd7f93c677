"""Cut the backbone+FPN subgraph out of a core ONNX (TensorRT-RTX builds it, not the full graph)."""

from __future__ import annotations

from pathlib import Path

import pytest

FPN_PREFIX = "/backbone/fpn/"


def fpn_outputs(model: object) -> list[str]:
    """Outputs of ``/backbone/fpn/...`` nodes (not Constants) read by nodes outside the FPN (the RPN
    head and RoiAlign): the feature maps, in graph order."""
    graph = model.graph  # type: ignore[attr-defined]
    consumers: dict[str, list[object]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in graph.node:
        if not node.name.startswith(FPN_PREFIX) or node.op_type == "Constant":
            continue
        for out in node.output:
            if any(not c.name.startswith(FPN_PREFIX) for c in consumers.get(out, [])):  # type: ignore[attr-defined]
                found.append(out)
    return found


def cut_backbone_fpn(source: Path, target: Path) -> list[str]:
    """Extract ``images`` -> FPN maps from ``source`` into ``target``, keeping crystal-rt's metadata."""
    pytest.importorskip("onnx")
    import onnx
    import onnx.utils

    model = onnx.load(str(source), load_external_data=False)
    outputs = fpn_outputs(model)
    assert outputs, "no FPN outputs found"
    onnx.utils.extract_model(str(source), str(target), ["images"], outputs)
    cut = onnx.load(str(target))
    del cut.metadata_props[:]
    for prop in model.metadata_props:
        cut.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(cut, str(target))
    return outputs
