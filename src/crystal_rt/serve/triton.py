"""Export an engine as a standard Triton Inference Server model repository.

``crystal-rt export-triton ENGINE -o model_repository/`` writes four models (NAME = the engine's
name unless ``--name`` says otherwise)::

    model_repository/
      NAME_core/  config.pbtxt  1/model.onnx   the core graph on the onnxruntime backend
                                               (1/model.plan, platform tensorrt_plan, for a
                                               TensorRT engine: Triton's TensorRT must match)
      NAME_pre/   config.pbtxt  1/model.py  1/crystal_rt_spec.json
                  python backend: encoded image bytes -> decode, CLAHE, letterbox, normalize
      NAME_post/  config.pbtxt  1/model.py  1/crystal_rt_spec.json
                  python backend: core outputs -> select, paste masks -> the result JSON
      NAME/       config.pbtxt  1/          the ensemble: IMAGE (bytes) -> RESULT (JSON string)

The python-backend models import ``crystal_rt``: install ``crystal-rt[cpu]`` into the Python
environment of Triton's python backend. The result JSON is the same as ``POST /v1/detect``'s. The
score threshold is the ``score_threshold`` parameter of NAME_post's config.pbtxt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineNotFound, InvalidOption, InvalidSpec
from ..geometry import CORE_INPUT, InputMap
from ..runtime.artifacts import Manifest, resolve_manifest
from ..spec import ModelSpec, PreprocessSpec

SPEC_FILE = "crystal_rt_spec.json"
CORE_OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("boxes", "TYPE_FP32", "[ {k}, 4 ]"),
    ("scores", "TYPE_FP32", "[ {k} ]"),
    ("labels", "TYPE_INT64", "[ {k} ]"),
    ("masks", "TYPE_FP32", "[ {k}, 28, 28 ]"),
)


#: META: the image's height and width, then every field of its geometry.InputMap in field order
#: (scale_x, scale_y, new_w, new_h, ratio_x, ratio_y): the post model rebuilds the same map the
#: detector uses, so a ``paste_at="resize"`` recipe (CHiMP) pastes into the same resized canvas.
META_FIELDS: tuple[str, ...] = ("height", "width", *(f.name for f in dataclasses.fields(InputMap)))
META_SIZE = len(META_FIELDS)


def encode_meta(height: int, width: int, mapping: InputMap) -> Any:
    """META (float64 [META_SIZE]) for an image of ``height x width`` mapped by ``mapping``."""
    return np.array([height, width, *dataclasses.astuple(mapping)], dtype=np.float64)


def decode_meta(meta: Any) -> tuple[int, int, InputMap]:
    """``(height, width, mapping)`` back from :func:`encode_meta`'s array."""
    values = [float(v) for v in np.asarray(meta, dtype=np.float64).reshape(-1)]
    if len(values) != META_SIZE:
        raise InvalidSpec(f"META has {len(values)} values, expected {META_SIZE} ({', '.join(META_FIELDS)})")
    sx, sy, new_w, new_h, rx, ry = values[2:]
    return int(values[0]), int(values[1]), InputMap(sx, sy, int(new_w), int(new_h), rx, ry)


# --- the logic the python-backend models run (kept here, so that it is tested without Triton) --
def preprocess_bytes(data: bytes, spec: PreprocessSpec, *, max_pixels: int, name: str = "<request>") -> Any:
    """``(images [1, 3, H, W] float32, meta float64 [META_SIZE])`` for encoded image bytes: meta is
    height, width and the recipe's whole map back (:func:`encode_meta`)."""
    from ..io.decode import read_image_info
    from ..runtime.bit_depth import full_range
    from ..runtime.preprocess import check_image, preprocess

    pixels = full_range(read_image_info(data, max_pixels=max_pixels, name=name))
    check_image(pixels, name)
    pre = preprocess(pixels, spec)
    return pre.tensor, encode_meta(pre.height, pre.width, pre.mapping)


def result_json(
    outputs: Any,
    meta: Any,
    model: ModelSpec,
    score_threshold: float,
    name: str | None = None,
    paste_at: str = "image",
) -> str:
    """The detection result JSON for the core outputs (boxes, scores, labels, masks) and the meta."""
    from ..results.detection import DetectionResult
    from ..runtime.backends.base import CoreOutputs
    from ..runtime.postprocess import postprocess

    height, width, mapping = decode_meta(meta)
    instances = postprocess(
        CoreOutputs(*outputs),
        scale=mapping,
        height=height,
        width=width,
        score_threshold=score_threshold,
        class_names=model.class_names,
        paste_at=paste_at,
    )
    return DetectionResult(width=width, height=height, instances=instances, image=name).to_json(indent=None)


def load_spec(folder: str | os.PathLike[str]) -> tuple[ModelSpec, PreprocessSpec, int]:
    data = json.loads((Path(folder) / SPEC_FILE).read_text())
    return (
        ModelSpec.from_dict(data["model"]),
        PreprocessSpec.from_dict(data["preprocess"]),
        int(data["max_pixels"]),
    )


# --- the repository -----------------------------------------------------------------------------
PRE_MODEL_PY = '''"""Triton python backend (crystal-rt): encoded image bytes -> a preprocessed tensor."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from crystal_rt.errors import CrystalRtError
from crystal_rt.serve.triton import load_spec, preprocess_bytes


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        _, self.spec, self.max_pixels = load_spec(folder)

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            try:
                images, meta = preprocess_bytes(bytes(raw), self.spec, max_pixels=self.max_pixels)
            except CrystalRtError as exc:
                error = pb_utils.TritonError(json.dumps({"type": type(exc).__name__, "message": exc.message}))
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("images", images.astype(np.float32)),
                        pb_utils.Tensor("META", meta.astype(np.float64)),
                    ]
                )
            )
        return responses
'''

POST_MODEL_PY = '''"""Triton python backend (crystal-rt): core outputs -> the result JSON (masks pasted)."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from crystal_rt.serve.triton import load_spec, result_json


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.model, self.preprocess, _ = load_spec(folder)
        params = json.loads(args["model_config"]).get("parameters", {})
        value = params.get("score_threshold", {}).get("string_value", "")
        self.score_threshold = float(value) if value else self.model.score_threshold

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = [
                pb_utils.get_input_tensor_by_name(request, key).as_numpy()
                for key in ("boxes", "scores", "labels", "masks")
            ]
            meta = pb_utils.get_input_tensor_by_name(request, "META").as_numpy().reshape(-1)
            paste_at = self.preprocess.paste_at
            text = result_json(outputs, meta, self.model, self.score_threshold, None, paste_at)
            result = np.array([text.encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESULT", result)]))
        return responses
'''


def _io(kind: str, entries: list[tuple[str, str, str]]) -> str:
    items = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {d}\n  }}' for n, t, d in entries
    )
    return f"{kind} [\n{items}\n]\n"


def _header(name: str, what: str, instances: int, kind: str) -> str:
    return (
        f'name: "{name}"\n{what}\nmax_batch_size: 0\n'
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
    )


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [
        f'      input_map {{\n        key: "{k}"\n        value: "{v}"\n      }}' for k, v in inputs.items()
    ]
    maps += [
        f'      output_map {{\n        key: "{k}"\n        value: "{v}"\n      }}' for k, v in outputs.items()
    ]
    body = "\n".join(maps)
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n{body}\n    }}'


def repository_configs(
    manifest: Manifest, name: str, *, instances: int = 1, gpu: bool = False
) -> dict[str, str]:
    """``{model folder: config.pbtxt text}`` for the four models."""
    h, w = manifest.preprocess.input_hw
    k = manifest.model.max_detections
    image_dims = f"[ 1, 3, {h}, {w} ]"
    core_outputs = [(n, t, d.format(k=k)) for n, t, d in CORE_OUTPUTS]
    platform = "tensorrt_plan" if manifest.backend == "tensorrt" else "onnxruntime_onnx"
    device = "KIND_GPU" if gpu or manifest.backend == "tensorrt" else "KIND_CPU"
    core = _header(f"{name}_core", f'platform: "{platform}"', instances, device)
    core += _io("input", [(CORE_INPUT, "TYPE_FP32", image_dims)]) + _io("output", core_outputs)
    pre = _header(f"{name}_pre", 'backend: "python"', instances, "KIND_CPU")
    pre += _io("input", [("IMAGE", "TYPE_STRING", "[ 1 ]")])
    pre += _io("output", [(CORE_INPUT, "TYPE_FP32", image_dims), ("META", "TYPE_FP64", f"[ {META_SIZE} ]")])
    post = _header(f"{name}_post", 'backend: "python"', instances, "KIND_CPU")
    post += _io("input", [*core_outputs, ("META", "TYPE_FP64", f"[ {META_SIZE} ]")])
    post += _io("output", [("RESULT", "TYPE_STRING", "[ 1 ]")])
    post += (
        'parameters {\n  key: "score_threshold"\n  value {\n'
        f'    string_value: "{manifest.model.score_threshold}"\n  }}\n}}\n'
    )
    steps = [
        _step(f"{name}_pre", {"IMAGE": "IMAGE"}, {"images": "preprocessed", "META": "meta"}),
        _step(f"{name}_core", {CORE_INPUT: "preprocessed"}, {n: n for n, _, _ in CORE_OUTPUTS}),
        _step(f"{name}_post", {**{n: n for n, _, _ in CORE_OUTPUTS}, "META": "meta"}, {"RESULT": "RESULT"}),
    ]
    ensemble = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
    ensemble += _io("input", [("IMAGE", "TYPE_STRING", "[ 1 ]")]) + _io(
        "output", [("RESULT", "TYPE_STRING", "[ 1 ]")]
    )
    ensemble += "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    return {f"{name}_core": core, f"{name}_pre": pre, f"{name}_post": post, name: ensemble}


def export_triton(
    engine: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    name: str | None = None,
    instances: int = 1,
    gpu: bool = False,
    max_pixels: int = 80_000_000,
    overwrite: bool = False,
) -> Path:
    """Write the model repository for ``engine`` into ``output``; returns ``output``."""
    manifest = Manifest.read(resolve_manifest(engine))
    name = name or manifest.name
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InvalidSpec(f"Triton model names should be letters, digits, '_' or '-', not {name!r}")
    if instances < 1:
        raise InvalidSpec(f"instances must be >= 1, got {instances}")
    source = manifest.engine_path
    if not source.is_file():
        raise EngineNotFound("the engine's model file is missing", path=source)
    out = Path(output)
    configs = repository_configs(manifest, name, instances=instances, gpu=gpu)
    taken = [folder for folder in configs if (out / folder).exists()]
    if taken and not overwrite:
        raise InvalidOption(f"already holds {', '.join(taken)}; pass --overwrite to replace", path=out)
    spec = {
        "model": manifest.model.to_dict(),
        "preprocess": manifest.preprocess.to_dict(),
        "max_pixels": max_pixels,
    }
    spec["engine"] = {"name": manifest.name, "backend": manifest.backend, "sha256": manifest.engine_sha256}
    for folder, text in configs.items():
        version = out / folder / "1"
        if (out / folder).exists():
            shutil.rmtree(out / folder)
        version.mkdir(parents=True)
        (out / folder / "config.pbtxt").write_text(text)
    model_file = "model.plan" if manifest.backend == "tensorrt" else "model.onnx"
    shutil.copyfile(source, out / f"{name}_core" / "1" / model_file)
    for folder, code in ((f"{name}_pre", PRE_MODEL_PY), (f"{name}_post", POST_MODEL_PY)):
        (out / folder / "1" / "model.py").write_text(code)
        (out / folder / "1" / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return out
