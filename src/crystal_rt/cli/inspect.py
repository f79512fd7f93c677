"""``crystal-rt inspect ENGINE_OR_ONNX``: print an engine's manifest or a core ONNX's specs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..console import console
from ..errors import EngineNotFound
from ..runtime.artifacts import Manifest, resolve_manifest
from ..spec import PreprocessSpec


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="show an engine's manifest or a core ONNX's specs", description=__doc__
    )
    p.add_argument("target", help="engine (folder, manifest, DIR/NAME) or a core .onnx file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    try:
        data: dict[str, Any] = Manifest.read(resolve_manifest(target)).to_dict()
    except EngineNotFound:
        if target.suffix != ".onnx" or not target.is_file():
            raise
        from .._lazy import require
        from ..spec import specs_from_metadata

        onnx = require("onnx", "Inspecting an ONNX file")
        model = onnx.load(str(target), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        model_spec, pre = specs_from_metadata(meta, target)
        data = {
            "onnx": str(target),
            "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
            "nodes": len(model.graph.node),
            "model": model_spec.to_dict(),
            "preprocess": pre.to_dict(),
        }
    data["recipe"] = _recipe_lines(data.get("preprocess"))
    console.print_json(json.dumps(data))
    return 0


def _recipe_lines(preprocess: Any) -> list[str]:
    """The recipe, one line per step (what ``describe()`` prints), for people reading the JSON."""

    if not isinstance(preprocess, dict):
        return []
    return PreprocessSpec.from_dict(preprocess).describe()
