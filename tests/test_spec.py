"""Tests for crystal_rt.spec: JSON round trips, validation, default class names."""

from __future__ import annotations

import json

import pytest

from crystal_rt.errors import CrystalRtError, InvalidSpec
from crystal_rt.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Clahe,
    Intensity,
    ModelSpec,
    ModelTransform,
    Normalize,
    PreprocessSpec,
    Resize,
    default_class_names,
)

# --------------------------------------------------------------------------- PreprocessSpec


def test_preprocess_defaults_match_design() -> None:
    spec = PreprocessSpec()
    assert spec == PreprocessSpec.paper()
    assert spec.clahe == Clahe(2.0, (8, 8))
    assert spec.resize == Resize("letterbox", 512, 512)
    assert spec.intensity == Intensity("bit_depth")
    assert spec.normalize == Normalize(IMAGENET_MEAN, IMAGENET_STD)
    assert spec.input_size == 512 and spec.input_hw == spec.image_hw == (512, 512)
    assert spec.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert spec.std == IMAGENET_STD == (0.229, 0.224, 0.225)
    assert spec.is_paper_shaped and spec.clahe_first and spec.preset_name == "paper"


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(),
        PreprocessSpec.paper(clahe=False),
        PreprocessSpec.paper(clip_limit=3.5, tile_grid=(4, 16), input_size=1024),
        PreprocessSpec.paper(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), tile_grid=(1, 1)),
        PreprocessSpec.paper(input_size=(384, 640)),
        PreprocessSpec.chimp(),
        PreprocessSpec.chimp(clip_limit=1.0, input_size=(676, 844)),
        PreprocessSpec((Resize("stretch", 256, 320), Intensity("bit_depth"), Normalize())),
        PreprocessSpec(
            (Clahe(), Resize("letterbox", 300, 301), Intensity("minmax"), ModelTransform(512, 512))
        ),
    ],
)
def test_preprocess_json_round_trip(spec: PreprocessSpec) -> None:
    text = spec.to_json()
    data = json.loads(text)
    assert data["recipe_version"] == 3
    assert data["training_bit_depth"] == spec.training_bit_depth
    assert [step["op"] for step in data["steps"]] == [step.op for step in spec.steps]
    # JSON has no tuples: the file holds lists, and they come back as tuples (equality and hashing hold)
    back = PreprocessSpec.from_json(text)
    assert back == spec
    assert hash(back) == hash(spec)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    if back.clahe is not None:
        assert isinstance(back.clahe.tile_grid, tuple)
    assert isinstance(back.mean, tuple) and isinstance(back.std, tuple)


def test_version_1_specs_load_as_the_paper_recipe() -> None:
    """Specs written by earlier crystal-rt (ONNX metadata, manifests) are flat objects."""
    v1 = {
        "clahe": True,
        "clip_limit": 3.0,
        "tile_grid": [4, 4],
        "input_size": 256,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }
    spec = PreprocessSpec.from_dict(v1)
    assert spec == PreprocessSpec.paper(
        clip_limit=3.0, tile_grid=(4, 4), input_size=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    assert PreprocessSpec.from_dict({"clahe": False}) == PreprocessSpec.paper(clahe=False)
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()
    # the demo model shipped with crystal-rt carries a version-1 spec
    onnx = pytest.importorskip("onnx")
    from crystal_rt.assets import demo_model

    meta = {p.key: p.value for p in onnx.load(str(demo_model())).metadata_props}
    assert PreprocessSpec.from_json(meta["crystal_rt.spec"]).preset_name == "paper"


def test_chimp_recipe_shapes() -> None:
    spec = PreprocessSpec.chimp()
    assert [s.op for s in spec.steps] == ["resize", "clahe", "intensity", "model_transform"]
    assert spec.resize == Resize("stretch", 1352, 1688)
    assert spec.clahe == Clahe(2.5, (12, 12))
    assert spec.image_hw == (800, 998)  # torchvision: 1352x1688 * 800/1352
    assert spec.input_hw == (800, 1024)  # padded to a multiple of 32
    assert not spec.is_paper_shaped and spec.preset_name == "chimp"
    assert spec.paste_at == "resize" and PreprocessSpec().paste_at == "image"
    assert PreprocessSpec.preset("chimp", clip_limit=1.5).clahe == Clahe(1.5, (12, 12))
    with pytest.raises(InvalidSpec, match="preset"):
        PreprocessSpec.preset("yolo")


@pytest.mark.parametrize(
    ("h", "w"), [(1352, 1688), (1024, 1224), (2028, 2532), (512, 512), (333, 1999), (801, 800)]
)
def test_model_transform_sizes_match_torchvision(h: int, w: int) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = GeneralizedRCNNTransform(800, 1333, list(IMAGENET_MEAN), list(IMAGENET_STD)).eval()
    images, _ = transform([torch.zeros(3, h, w)])
    step = ModelTransform()
    assert step.resized_hw(h, w) == tuple(images.image_sizes[0])
    assert step.padded_hw(*step.resized_hw(h, w)) == tuple(images.tensors.shape[-2:])


def test_with_overrides() -> None:
    spec = PreprocessSpec.chimp().with_overrides(clip_limit=4.0, input_size=(676, 844))
    assert spec.clahe == Clahe(4.0, (12, 12)) and spec.resize == Resize("stretch", 676, 844)
    assert [s.op for s in spec.steps] == ["resize", "clahe", "intensity", "model_transform"]  # order kept
    off = PreprocessSpec().with_overrides(clahe=False)
    assert off.clahe is None and off == PreprocessSpec.paper(clahe=False)
    on = off.with_overrides(tile_grid=(4, 4))
    assert on.clahe == Clahe(2.0, (4, 4)) and on.clahe_first
    assert PreprocessSpec().with_overrides(input_size=1024).input_hw == (1024, 1024)


def test_describe_lists_the_steps_and_the_input() -> None:
    lines = PreprocessSpec.chimp().describe()
    assert len(lines) == 7
    assert lines[0] == "0. gray images become three equal channels (RGB)"
    assert lines[1].startswith("1. resize: stretch to 1352 x 1688")
    assert "min)" in lines[3]
    assert lines[-2].startswith("trained on 8-bit images: 16-bit images are mapped to 8 bits")
    assert lines[-1] == (
        "engine input: 1 x 3 x 800 x 1024 (image 800 x 998, zero padding below/right); "
        "masks pasted at the resized size, then nearest to the image"
    )
    assert PreprocessSpec().describe()[-1] == "engine input: 1 x 3 x 512 x 512"


def test_preprocess_specs_differ() -> None:
    assert PreprocessSpec.paper(clip_limit=2.0) != PreprocessSpec.paper(clip_limit=3.0)
    assert PreprocessSpec.paper(tile_grid=(8, 8)) != PreprocessSpec.paper(tile_grid=(8, 4))
    assert PreprocessSpec.chimp() != PreprocessSpec.paper()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": 500},
        {"input_size": 33},
        {"input_size": 0},
        {"input_size": 16},
        {"input_size": -32},
        {"tile_grid": (0, 8)},
        {"tile_grid": (8, 0)},
        {"tile_grid": (8,)},
        {"tile_grid": (8, 8, 8)},
        {"std": (0.229, 0.0, 0.225)},
        {"std": (-1.0, 1.0, 1.0)},
        {"std": (1.0, 1.0)},
        {"mean": (0.5, 0.5)},
    ],
)
def test_preprocess_invalid_values(kwargs: dict) -> None:
    with pytest.raises(InvalidSpec):
        PreprocessSpec.paper(**kwargs)
    # The same through a version-1 dict (as lists, the way JSON delivers them).
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_dict(data)


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [{"op": "resize", "mode": "letterbox", "height": 512, "width": 512}],
        [{"op": "intensity", "mode": "bit_depth"}, {"op": "normalize"}],
        [
            {"op": "resize", "mode": "zoom", "height": 512, "width": 512},
            {"op": "intensity"},
            {"op": "normalize"},
        ],
        [
            {"op": "resize", "height": 512, "width": 512},
            {"op": "intensity", "mode": "gamma"},
            {"op": "normalize"},
        ],
        [{"op": "resize", "height": 500, "width": 512}, {"op": "intensity"}, {"op": "normalize"}],
        [
            {"op": "resize", "height": 512, "width": 512},
            {"op": "intensity"},
            {"op": "clahe"},
            {"op": "normalize"},
        ],
        [{"op": "clahe"}, {"op": "resize"}, {"op": "clahe"}, {"op": "intensity"}, {"op": "normalize"}],
        [{"op": "resize"}, {"op": "intensity"}, {"op": "normalize"}, {"op": "normalize"}],
        [{"op": "sharpen"}],
        [{"op": "resize", "height": "512"}, {"op": "intensity"}, {"op": "normalize"}],
        [{"op": "resize", "colour": 1}, {"op": "intensity"}, {"op": "normalize"}],
        [{"op": "resize"}, {"op": "intensity"}, {"op": "model_transform", "min_size": 0}],
        ["resize"],
    ],
)
def test_bad_recipes_are_one_invalid_spec(steps: list) -> None:
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_dict({"recipe_version": 2, "steps": steps})


def test_newer_recipe_versions_are_refused() -> None:
    for version in (4, 0, "3", True, None):
        with pytest.raises(InvalidSpec, match="upgrade crystal-rt"):
            PreprocessSpec.from_dict({"recipe_version": version, "steps": []})


def test_training_bit_depth_is_8_for_the_presets_and_older_recipes() -> None:
    """Recipes record the bit depth of the training images: 8 for both presets, for version-2
    recipes (written before the field) and version-1 specs; 16 round-trips; nothing else loads."""
    assert PreprocessSpec.paper().training_bit_depth == PreprocessSpec.chimp().training_bit_depth == 8
    assert PreprocessSpec().training_bit_depth == 8
    v2 = PreprocessSpec.chimp().to_dict()
    del v2["training_bit_depth"]
    v2["recipe_version"] = 2
    assert PreprocessSpec.from_dict(v2) == PreprocessSpec.chimp()
    assert PreprocessSpec.from_dict({"input_size": 256}).training_bit_depth == 8
    with pytest.raises(InvalidSpec, match="training_bit_depth"):  # version 2 has no such field
        PreprocessSpec.from_dict({**v2, "training_bit_depth": 16})
    sixteen = PreprocessSpec.paper(training_bit_depth=16)
    assert PreprocessSpec.from_json(sixteen.to_json()) == sixteen != PreprocessSpec.paper()
    assert sixteen.with_overrides(input_size=256).training_bit_depth == 16
    assert PreprocessSpec.paper().with_overrides(training_bit_depth=16) == sixteen
    assert sixteen.describe()[-2] == "trained on 16-bit images: 16-bit images stay 16-bit (16-bit CLAHE)"
    for bad in (12, 0, "8", True, None, 8.5):
        with pytest.raises(InvalidSpec, match="training_bit_depth must be 8 or 16"):
            PreprocessSpec.from_dict({**sixteen.to_dict(), "training_bit_depth": bad})


def test_preprocess_unknown_key() -> None:
    with pytest.raises(InvalidSpec, match="bogus"):
        PreprocessSpec.from_dict({"input_size": 512, "bogus": 1})
    with pytest.raises(InvalidSpec, match="bogus"):
        PreprocessSpec.from_dict({"recipe_version": 2, "steps": [], "bogus": 1})


@pytest.mark.parametrize("text", ["", "{", "not json", "{'input_size': 512}"])
def test_preprocess_from_json_rejects_non_json(text: str) -> None:
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_json(text)


@pytest.mark.parametrize("text", ["[]", "512", '"spec"', "null"])
def test_preprocess_from_json_rejects_non_objects(text: str) -> None:
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_json(text)


def test_preprocess_bad_type_is_invalid_spec() -> None:
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_dict({"tile_grid": ["a", "b"]})


def test_invalid_spec_is_a_crystal_rt_error() -> None:
    assert issubclass(InvalidSpec, CrystalRtError)


# --------------------------------------------------------------------------- ModelSpec


def test_model_default_class_names() -> None:
    assert ModelSpec("maskrcnn_resnet50_fpn", 2).class_names == ("__background__", "crystal")
    assert ModelSpec("a", 4).class_names == ("__background__", "class_1", "class_2", "class_3")
    assert default_class_names(2) == ("__background__", "crystal")
    assert default_class_names(3) == ("__background__", "class_1", "class_2")


def test_model_defaults() -> None:
    spec = ModelSpec("a", 2)
    assert spec.max_detections == 100
    assert spec.score_threshold == 0.5


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("maskrcnn_resnet50_fpn", 2),
        ModelSpec("maskrcnn_resnet18_fpn", 3, class_names=("bg", "crystal", "precipitate")),
        ModelSpec("x", 2, max_detections=3839, score_threshold=0.0),
        ModelSpec("x", 2, max_detections=1, score_threshold=1.0),
    ],
)
def test_model_json_round_trip(spec: ModelSpec) -> None:
    text = spec.to_json()
    assert isinstance(json.loads(text)["class_names"], list)
    back = ModelSpec.from_json(text)
    assert back == spec
    assert hash(back) == hash(spec)
    assert isinstance(back.class_names, tuple)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_model_class_names_from_list() -> None:
    spec = ModelSpec.from_dict({"arch": "a", "num_classes": 3, "class_names": ["bg", "x", "y"]})
    assert spec.class_names == ("bg", "x", "y")
    assert spec.label_name(1) == "x"
    assert spec.label_name(2) == "y"
    assert spec.label_name(7) == "7"
    assert spec.label_name(-1) == "-1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"num_classes": 0},
        {"num_classes": 2, "class_names": ("bg", "a", "b")},
        {"num_classes": 3, "class_names": ("bg", "a")},
        {"num_classes": 2, "max_detections": 3840},
        {"num_classes": 2, "max_detections": 5000},
        {"num_classes": 2, "max_detections": 0},
        {"num_classes": 2, "score_threshold": 1.5},
        {"num_classes": 2, "score_threshold": -0.1},
    ],
)
def test_model_invalid_values(kwargs: dict) -> None:
    with pytest.raises(InvalidSpec):
        ModelSpec("maskrcnn_resnet50_fpn", **kwargs)
    data = {"arch": "maskrcnn_resnet50_fpn", **kwargs}
    if "class_names" in data:
        data["class_names"] = list(data["class_names"])
    with pytest.raises(InvalidSpec):
        ModelSpec.from_dict(data)


def test_model_unknown_keys() -> None:
    with pytest.raises(InvalidSpec, match="colour"):
        ModelSpec.from_dict({"arch": "a", "num_classes": 2, "colour": "red"})


def test_model_missing_required_key() -> None:
    with pytest.raises(InvalidSpec):
        ModelSpec.from_dict({"arch": "a"})


@pytest.mark.parametrize("text", ["", "{", "arch=a", "[1, 2", "[]", "3"])
def test_model_from_json_rejects_bad_text(text: str) -> None:
    with pytest.raises(InvalidSpec):
        ModelSpec.from_json(text)
