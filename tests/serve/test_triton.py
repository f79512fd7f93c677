"""`crystal-rt export-triton`: the model repository's files, its config.pbtxt files, and the
python-backend models run against a stand-in for triton_python_backend_utils."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import LOW_THRESHOLD, cli_namespace, png_bytes

from crystal_rt.data.synthetic import make_drop
from crystal_rt.errors import CrystalRtError
from crystal_rt.serve.triton import export_triton

TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w.]*)|(-?\d+(?:\.\d+)?)|([{}\[\]:,]))')


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """A small protobuf text-format parser: every field maps to the list of its values."""
    tokens = [
        m.group(2) or m.group(3) or m.group(4) or m.group(5) for m in TOKEN.finditer(text) if not m.group(1)
    ]
    assert "".join(re.sub(r"\s|#[^\n]*", "", text)) == "".join(t for t in tokens if t), "unparsed text"
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return json.loads(tok)
        return tok if not re.fullmatch(r"-?\d+", tok) else int(tok)

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            assert re.fullmatch(r"[A-Za-z_]\w*", key), f"bad field name {key!r}"
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            item = value()
            fields.setdefault(key, []).extend(
                item if isinstance(item, list) and key not in ("dims",) else [item]
            )
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        if end is not None:
            assert tokens[pos] == end
            pos += 1
        return fields

    result = message(None)
    assert pos == len(tokens)
    return result


@pytest.fixture(scope="module")
def repo(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_triton(tiny.engine_dir, tmp_path_factory.mktemp("triton") / "model_repository")


def test_repository_files_and_configs(repo: Path, tiny: Any) -> None:
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "tiny/config.pbtxt",
        "tiny_core/1/model.onnx",
        "tiny_core/config.pbtxt",
        "tiny_post/1/crystal_rt_spec.json",
        "tiny_post/1/model.py",
        "tiny_post/config.pbtxt",
        "tiny_pre/1/crystal_rt_spec.json",
        "tiny_pre/1/model.py",
        "tiny_pre/config.pbtxt",
    ]
    assert (repo / "tiny" / "1").is_dir()  # Triton wants a version folder, even for an ensemble
    assert (repo / "tiny_core/1/model.onnx").read_bytes() == (tiny.engine_dir / "tiny.onnx").read_bytes()
    configs = {p.parent.name: parse_pbtxt(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    for folder, cfg in configs.items():
        assert cfg["name"] == [folder] and cfg["max_batch_size"] == [0]
    core = configs["tiny_core"]
    assert core["platform"] == ["onnxruntime_onnx"]
    assert core["input"][0]["dims"] == [[1, 3, tiny.size, tiny.size]]
    outputs = {o["name"][0]: (o["data_type"][0], o["dims"][0]) for o in core["output"]}
    assert outputs == {
        "boxes": ("TYPE_FP32", [tiny.k, 4]),
        "scores": ("TYPE_FP32", [tiny.k]),
        "labels": ("TYPE_INT64", [tiny.k]),
        "masks": ("TYPE_FP32", [tiny.k, 28, 28]),
    }
    assert configs["tiny_pre"]["backend"] == ["python"] == configs["tiny_post"]["backend"]
    ensemble = configs["tiny"]
    assert ensemble["platform"] == ["ensemble"]
    available = {i["name"][0] for i in ensemble["input"]}
    for step in ensemble["ensemble_scheduling"][0]["step"]:
        assert step["model_name"][0] in configs
        model_inputs = {i["name"][0] for i in configs[step["model_name"][0]]["input"]}
        model_outputs = {o["name"][0] for o in configs[step["model_name"][0]]["output"]}
        for m in step["input_map"]:
            assert m["key"][0] in model_inputs and m["value"][0] in available
        for m in step["output_map"]:
            assert m["key"][0] in model_outputs
            available.add(m["value"][0])
    assert {o["name"][0] for o in ensemble["output"]} <= available


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs


def _fake_pb_utils() -> types.ModuleType:
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = _Tensor  # type: ignore[attr-defined]
    mod.InferenceResponse = _Response  # type: ignore[attr-defined]
    mod.TritonError = lambda message: message  # type: ignore[attr-defined]
    mod.get_input_tensor_by_name = lambda request, name: _Tensor(name, request.inputs[name])  # type: ignore[attr-defined]
    return mod


def _load_model(repo: Path, folder: str, config_json: dict[str, Any]) -> Any:
    spec = importlib.util.spec_from_file_location(f"triton_{folder}", repo / folder / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(repo / folder),
            "model_version": "1",
            "model_config": json.dumps(config_json),
        }
    )
    return model


def test_python_models_reproduce_the_detector(repo: Path, detector: Any, monkeypatch: Any) -> None:
    import onnxruntime as ort

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    params = {"parameters": {"score_threshold": {"string_value": str(LOW_THRESHOLD)}}}
    pre = _load_model(repo, "tiny_pre", {})
    post = _load_model(repo, "tiny_post", params)
    session = ort.InferenceSession(str(repo / "tiny_core/1/model.onnx"), providers=["CPUExecutionProvider"])
    data = png_bytes(make_drop(3, 150, 200).image)
    bad = np.array([b"not an image"], dtype=np.object_)
    first, error = pre.execute([_Request(IMAGE=np.array([data], dtype=np.object_)), _Request(IMAGE=bad)])
    assert json.loads(error.error) == {"type": "InvalidImage", "message": "not a recognised image format"}
    core = dict(
        zip(
            ("boxes", "scores", "labels", "masks"),
            session.run(None, {"images": first.outputs["images"]}),
            strict=True,
        )
    )
    [answer] = post.execute([_Request(**core, META=first.outputs["META"])])
    got = json.loads(answer.outputs["RESULT"][0])
    want = detector.detect(data).to_dict()
    assert got["num_instances"] == want["num_instances"] > 0
    assert got["instances"] == want["instances"] and (got["width"], got["height"]) == (200, 150)


@pytest.fixture(scope="module")
def resize_paste_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny model on a CHiMP-shaped recipe (stretch, CLAHE after the resize, the model's
    transform, masks pasted at the resized size: ``paste_at="resize"``) and a non-square input."""
    torch = pytest.importorskip("torch")
    from crystal_rt.build.engine import build_engine
    from crystal_rt.export.onnx_export import export_core_onnx
    from crystal_rt.models.maskrcnn import build_maskrcnn, load_checkpoint, save_checkpoint
    from crystal_rt.spec import ModelSpec, PreprocessSpec

    root = tmp_path_factory.mktemp("resize-paste")
    torch.manual_seed(1)
    pre = PreprocessSpec.chimp(input_size=(180, 240), min_size=160, max_size=224)
    assert pre.paste_at == "resize" and pre.input_hw[0] != pre.input_hw[1]
    options = {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}
    model = build_maskrcnn("maskrcnn_resnet18_fpn", 2, preprocess=pre, max_detections=20, **options)
    spec = ModelSpec(arch="maskrcnn_resnet18_fpn", num_classes=2, max_detections=20)
    checkpoint = save_checkpoint(root / "m.pt", model, spec, pre, model_kwargs=options)
    result = export_core_onnx(load_checkpoint(checkpoint), root / "m.onnx", validate=False)
    build_engine(result.path, root / "engine")
    return root / "engine"


def _run_repository(repo: Path, name: str, data: bytes, threshold: float) -> dict[str, Any]:
    """One image through the repository's pre model, its core ONNX on ONNX Runtime and its post model."""
    import onnxruntime as ort

    params = {"parameters": {"score_threshold": {"string_value": str(threshold)}}}
    pre = _load_model(repo, f"{name}_pre", {})
    post = _load_model(repo, f"{name}_post", params)
    core_onnx = repo / f"{name}_core" / "1" / "model.onnx"
    session = ort.InferenceSession(str(core_onnx), providers=["CPUExecutionProvider"])
    [first] = pre.execute([_Request(IMAGE=np.array([data], dtype=np.object_))])
    outputs = session.run(None, {"images": first.outputs["images"]})
    core = dict(zip(("boxes", "scores", "labels", "masks"), outputs, strict=True))
    [answer] = post.execute([_Request(**core, META=first.outputs["META"])])
    result: dict[str, Any] = json.loads(answer.outputs["RESULT"][0])
    return result


def test_resize_paste_recipe_keeps_its_masks(
    resize_paste_engine: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A ``paste_at="resize"`` recipe through the repository answers what Detector.detect answers,
    masks included (the META once dropped the resized size, and every mask came back empty)."""
    from crystal_rt import Detector

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    repo = export_triton(resize_paste_engine, tmp_path / "repo", name="chimpish")
    data = png_bytes(make_drop(5, 210, 260).image)
    got = _run_repository(repo, "chimpish", data, LOW_THRESHOLD)
    with Detector.load(resize_paste_engine, score_threshold=LOW_THRESHOLD) as det:
        want = det.detect(data).to_dict()
    assert want["num_instances"] > 0 and all(i["area"] > 0 for i in want["instances"])
    assert got["instances"] == want["instances"] and (got["width"], got["height"]) == (260, 210)


def test_export_refuses_to_overwrite_and_cli(repo: Path, tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(CrystalRtError, match="--overwrite"):
        export_triton(tiny.engine_dir, repo)
    from crystal_rt.cli import export_triton as command

    out = tmp_path / "repo"
    args = cli_namespace(
        "export_triton", str(tiny.engine_dir), "-o", str(out), "--name", "crystals", "--instances", "2"
    )
    assert command.run(args) == 0
    cfg = parse_pbtxt((out / "crystals_core" / "config.pbtxt").read_text())
    assert cfg["instance_group"][0]["count"] == [2] and cfg["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert "crystals_pre" in (out / "crystals" / "config.pbtxt").read_text()
