"""Tests for crystal_rt.spec: JSON round trips, validation, default class names."""

from __future__ import annotations

import json

import pytest

from crystal_rt.errors import CrystalRtError, InvalidSpec
from crystal_rt.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    PreprocessSpec,
    default_class_names,
)

# --------------------------------------------------------------------------- PreprocessSpec


def test_preprocess_defaults_match_design() -> None:
    spec = PreprocessSpec()
    assert spec.clahe is True
    assert spec.clip_limit == 2.0
    assert spec.tile_grid == (8, 8)
    assert spec.input_size == 512
    assert spec.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert spec.std == IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(),
        PreprocessSpec(clahe=False),
        PreprocessSpec(clip_limit=3.5, tile_grid=(4, 16), input_size=1024),
        PreprocessSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), tile_grid=(1, 1)),
    ],
)
def test_preprocess_json_round_trip(spec: PreprocessSpec) -> None:
    text = spec.to_json()
    data = json.loads(text)
    # JSON has no tuples: the file holds lists ...
    assert data["tile_grid"] == list(spec.tile_grid)
    assert isinstance(data["tile_grid"], list)
    assert isinstance(data["mean"], list)
    # ... and they come back as tuples, so that equality and hashing hold.
    back = PreprocessSpec.from_json(text)
    assert back == spec
    assert hash(back) == hash(spec)
    assert isinstance(back.tile_grid, tuple)
    assert isinstance(back.mean, tuple)
    assert isinstance(back.std, tuple)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_preprocess_from_dict_normalises_lists_to_tuples() -> None:
    spec = PreprocessSpec.from_dict({"tile_grid": [4, 4], "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert spec.tile_grid == (4, 4)
    assert spec.mean == (0.0, 0.0, 0.0)
    assert all(isinstance(v, float) for v in spec.mean + spec.std)
    assert spec == PreprocessSpec(tile_grid=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_preprocess_to_json_is_stable() -> None:
    assert PreprocessSpec().to_json() == PreprocessSpec().to_json()
    assert list(json.loads(PreprocessSpec().to_json())) == sorted(json.loads(PreprocessSpec().to_json()))


def test_preprocess_specs_differ() -> None:
    assert PreprocessSpec(clip_limit=2.0) != PreprocessSpec(clip_limit=3.0)
    assert PreprocessSpec(tile_grid=(8, 8)) != PreprocessSpec(tile_grid=(8, 4))


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
        PreprocessSpec(**kwargs)
    # The same through from_dict (as lists, the way JSON delivers them).
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    with pytest.raises(InvalidSpec):
        PreprocessSpec.from_dict(data)


def test_preprocess_unknown_key() -> None:
    with pytest.raises(InvalidSpec, match="bogus"):
        PreprocessSpec.from_dict({"input_size": 512, "bogus": 1})


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
