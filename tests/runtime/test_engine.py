"""Engines on disk (build, manifest, resolution, compatibility) and the Detector API."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from crystal_rt import Detector, build_engine
from crystal_rt.errors import (
    EngineIncompatible,
    EngineNotFound,
    InvalidImage,
    InvalidModel,
    MissingDependency,
)
from crystal_rt.runtime.artifacts import Manifest, resolve_manifest, sha256_file


def test_build_writes_engine_and_manifest(tiny):
    manifest = Manifest.read(tiny.engine_dir / "tiny.manifest.json")
    assert (tiny.engine_dir / "tiny.onnx").is_file()
    assert manifest.backend == "onnxruntime"
    assert manifest.engine_sha256 == sha256_file(tiny.engine_dir / "tiny.onnx")
    assert manifest.source_onnx_sha256 == sha256_file(tiny.onnx)
    assert manifest.input_shape == [1, 3, tiny.size, tiny.size]
    assert manifest.precision == "fp32"
    assert manifest.preprocess.input_size == tiny.size
    assert manifest.model.class_names == ("__background__", "crystal")
    raw = json.loads((tiny.engine_dir / "tiny.manifest.json").read_text())
    for key in (
        "format_version",
        "crystal_rt_version",
        "backend_version",
        "cuda_version",
        "gpu_name",
        "compute_capability",
        "build_options",
        "build_time",
    ):
        assert key in raw


def test_engine_locations(tiny):
    expected = tiny.engine_dir / "tiny.manifest.json"
    for location in (tiny.engine_dir, expected, tiny.engine_dir / "tiny", tiny.engine_dir / "tiny.onnx"):
        assert resolve_manifest(location) == expected


def test_folder_with_two_engines_is_ambiguous(tiny, tmp_path):
    shutil.copytree(tiny.engine_dir, tmp_path / "e")
    build_engine(tiny.onnx, tmp_path / "e", name="other")
    with pytest.raises(EngineNotFound, match="several engines"):
        resolve_manifest(tmp_path / "e")
    assert Detector.load(tmp_path / "e" / "other").manifest.name == "other"


def test_onnx_without_manifest_suggests_build(tiny, tmp_path):
    with pytest.raises(EngineNotFound, match="build-engine"):
        Detector.load(tiny.onnx)
    with pytest.raises(EngineNotFound, match="no engine"):
        Detector.load(tmp_path)
    with pytest.raises(EngineNotFound, match="not found"):
        Detector.load(tmp_path / "missing")


def _copy_engine(tiny, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny.engine_dir, dst)
    return dst, dst / "tiny.manifest.json"


def test_engine_from_another_onnxruntime_is_refused(tiny, tmp_path):
    dst, manifest_path = _copy_engine(tiny, tmp_path)
    data = json.loads(manifest_path.read_text())
    data["backend_version"] = "0.1.0"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(EngineIncompatible) as err:
        Detector.load(dst)
    message = str(err.value)
    assert "onnxruntime 0.1.0" in message and "crystal-rt build-engine" in message


def test_truncated_engine_is_refused(tiny, tmp_path):
    dst, _ = _copy_engine(tiny, tmp_path)
    engine = dst / "tiny.onnx"
    engine.write_bytes(engine.read_bytes()[:1000])
    with pytest.raises(EngineIncompatible, match="truncated"):
        Detector.load(dst)


@pytest.mark.parametrize(
    "content", ["{}", "not json", '{"format": "crystal-rt-engine", "format_version": 99}']
)
def test_bad_manifests(tiny, tmp_path, content):
    dst, manifest_path = _copy_engine(tiny, tmp_path)
    manifest_path.write_text(content)
    with pytest.raises(EngineIncompatible) as err:
        Detector.load(dst)
    assert "tiny.manifest.json" in str(err.value)


def test_tensorrt_backend_without_tensorrt(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from crystal_rt.runtime.tensorrt.modules import tensorrt_installed

    if tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MissingDependency) as err:
        build_engine(tiny.onnx, tmp_path, backend="tensorrt")
    assert "crystal-rt[gpu]" in str(err.value)


def test_build_refuses_non_crystal_rt_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InvalidModel, match="crystal-rt export"):
        build_engine(path, tmp_path / "out")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InvalidModel, match=r"garbage\.onnx"):
        build_engine(garbage, tmp_path / "out")


def test_detect_inputs_agree(tiny, tmp_path):
    """Path, bytes and uint8 array give identical results, for a gray drop and for an RGB one (whose
    channels differ, so that a swapped channel order would show)."""
    import cv2

    from crystal_rt.data.synthetic import make_drop

    det = Detector.load(tiny.engine_dir, score_threshold=0.05)
    image = make_drop(3, 300, 400).image
    path = tmp_path / "drop.png"
    cv2.imwrite(str(path), image)
    by_path = det.detect(path)
    by_bytes = det.detect(path.read_bytes(), name="drop.png")
    by_array = det.detect(image)
    rgb = np.ascontiguousarray(np.dstack([image, image // 2, 255 - image]))
    rgb_path = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb_path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # OpenCV writes BGR
    rgb_by_path, rgb_by_array = det.detect(rgb_path), det.detect(rgb)
    assert by_path.image == str(path) and by_bytes.image == "drop.png"
    assert (by_path.width, by_path.height) == (400, 300)
    assert len(by_path) > 0
    assert (rgb_by_path.width, rgb_by_path.height) == (400, 300) and len(rgb_by_path) > 0
    assert [i.to_dict() for i in rgb_by_array.instances] == [i.to_dict() for i in rgb_by_path.instances]
    assert [i.to_dict() for i in rgb_by_array.instances] != [i.to_dict() for i in by_path.instances]
    for other in (by_bytes, by_array):
        assert [i.box for i in other.instances] == [i.box for i in by_path.instances]
        assert [i.to_dict() for i in other.instances] == [i.to_dict() for i in by_path.instances]
    for stage in ("decode", "clahe", "letterbox", "engine", "paste", "total"):
        assert by_path.timings_ms[stage] >= 0.0
    assert by_path.timings_ms["total"] >= by_path.timings_ms["engine"]
    # A higher threshold keeps a subset.
    strict = det.detect(image, score_threshold=0.9)
    assert all(i.score >= 0.9 for i in strict.instances)
    assert len(strict) <= len(by_array)


def test_detect_16bit_and_rgb(tiny):
    det = Detector.load(tiny.engine_dir, score_threshold=0.05)
    rng = np.random.default_rng(0)
    gray16 = (rng.random((200, 260)) * 60000).astype(np.uint16)
    rgb8 = (rng.random((220, 180, 3)) * 255).astype(np.uint8)
    for image in (gray16, rgb8):
        result = det.detect(image)
        assert (result.height, result.width) == image.shape[:2]
        for inst in result.instances:
            x1, y1, x2, y2 = inst.box
            assert 0 <= x1 <= x2 <= result.width and 0 <= y1 <= y2 <= result.height
            assert inst.mask.to_full().shape == image.shape[:2]


def test_detect_is_thread_safe(tiny):
    from crystal_rt.data.synthetic import make_drop

    det = Detector.load(tiny.engine_dir, score_threshold=0.05)
    images = [make_drop(s, 256, 256).image for s in range(3)]
    expected = [det.detect(im).to_dict()["instances"] for im in images]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = det.detect(images[k % 3]).to_dict()["instances"]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(6):
        assert results[k] == expected[k % 3]


def test_bad_images_raise_invalid_image(tiny, tmp_path):
    det = Detector.load(tiny.engine_dir)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for path in (tmp_path / "empty.jpg", tmp_path / "text.png", tmp_path / "missing.tif"):
        with pytest.raises(InvalidImage) as err:
            det.detect(path)
        assert path.name in str(err.value)
    with pytest.raises(InvalidImage):
        det.detect(np.zeros((0, 5), dtype=np.uint8))


def test_real_images(tiny, real_images):
    det = Detector.load(tiny.engine_dir, score_threshold=0.05)
    for path in real_images:
        result = det.detect(path)
        data = json.loads(result.to_json())
        assert data["width"] > 1000 and data["height"] > 1000
        for inst in data["instances"]:
            assert set(inst["centroid"]) == {"x", "y"}
            assert inst["mask"]["size"] == [data["height"], data["width"]]


def test_torch_reference_matches_engine(tiny):
    """The reference backend (the checkpoint in PyTorch) and the ORT engine agree on one image."""
    from crystal_rt.data.synthetic import make_drop
    from crystal_rt.evaluate.parity import compare_results
    from crystal_rt.models.reference import detector_from_checkpoint

    image = make_drop(3, 300, 400).image
    ref = detector_from_checkpoint(tiny.checkpoint, score_threshold=0.05).detect(image, name="a")
    eng = Detector.load(tiny.engine_dir, score_threshold=0.05).detect(image, name="a")
    report = compare_results(ref, eng, score_threshold=0.05, max_detections=tiny.k)
    assert report.matched > 0 and not report.failures


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_detect_rejects_a_threshold_outside_0_1(tiny, threshold: float) -> None:
    from crystal_rt.errors import InvalidSpec

    with Detector.load(tiny.engine_dir) as detector, pytest.raises(InvalidSpec, match=r"in \[0, 1\]"):
        detector.detect(np.zeros((64, 64), np.uint8), name="x.png", score_threshold=threshold)
