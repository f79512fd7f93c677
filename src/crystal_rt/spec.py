"""PreprocessSpec (the preprocessing recipe) and ModelSpec: what every artifact carries and every
backend obeys.

A :class:`PreprocessSpec` is an ordered, versioned recipe of steps (docs/contract.md "Preprocessing
contract", design note 26):

* :class:`Clahe` - CLAHE (gray directly, 8-bit RGB on L of LAB), before or after the resize;
* :class:`Resize` - ``letterbox`` (keep the aspect, top-left of a black H x W canvas) or
  ``stretch`` (exactly H x W), OpenCV INTER_LINEAR in the image's integer type;
* :class:`Intensity` - ``bit_depth`` (divide by 2^bits - 1; 16-bit images with fewer significant
  bits are expanded to the full range before the first step) or ``minmax`` (per image, over all
  channels, as CHiMP computes it);
* :class:`Normalize` - ``(x - mean) / std`` per channel (the network input), or
  :class:`ModelTransform` - torchvision's ``GeneralizedRCNNTransform`` as a model trained with it
  left in expects: normalise, bilinear resize to ``min_size``/``max_size``, zero-pad to a multiple
  of ``size_divisible``.

The grammar: ``[Clahe] Resize [Clahe] Intensity (Normalize | ModelTransform)`` with at most one
CLAHE, so the engine input is a fixed ``1 x 3 x H x W`` (:attr:`PreprocessSpec.input_hw`). Presets:
:meth:`PreprocessSpec.paper` (CLAHE, 512 letterbox, /max, ImageNet; the default) and
:meth:`PreprocessSpec.chimp` (Diamond's CHiMP). ``training_bit_depth`` (8 or 16) is the bit depth of
the images the model was trained on: with 8 (both presets, and every recipe written before the
field) a 16-bit image is mapped to 8 bits (``round(v / 257)``, after its significant bits are
expanded) before the first step, so the model sees the 8-bit CLAHE it was trained with; with 16 it
stays 16-bit (16-bit CLAHE). The recipe is written into the core ONNX
(``metadata_props["crystal_rt.spec"]``) and every engine manifest as
``{"recipe_version": 3, "steps": [...], "training_bit_depth": 8, ...}``; version-2 recipes (no
``training_bit_depth``: 8) and version-1 specs (a flat object with ``clahe``, ``clip_limit``,
``tile_grid``, ``input_size``, ``mean``, ``std``: the paper recipe) still load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from .errors import InvalidModel, InvalidSpec

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

SPEC_METADATA_KEY = "crystal_rt.spec"
MODEL_METADATA_KEY = "crystal_rt.model"
RECIPE_VERSION = 3
#: recipe versions this crystal-rt reads (1: flat paper spec; 2: steps, no training_bit_depth)
READ_VERSIONS = (1, 2, 3)
PRESETS = ("paper", "chimp")
#: the bit depths a model's training images can have (``PreprocessSpec.training_bit_depth``)
TRAINING_BIT_DEPTHS = (8, 16)

ResizeMode = Literal["letterbox", "stretch"]
IntensityMode = Literal["bit_depth", "minmax"]
PasteAt = Literal["image", "resize"]
ColorMode = Literal["as_decoded", "rgb"]


def _check_keys(cls: type, data: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    known = {f.name for f in fields(cls)} | set(skip)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidSpec(f"{cls.__name__} has no field(s) {', '.join(unknown)}")


def _three(values: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"{what} must be 3 numbers, got {values!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise InvalidSpec(f"{what} must be 3 finite numbers, got {values!r}")
    return out  # type: ignore[return-value]


def _mean_std(mean: Any, std: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    m, s = _three(mean, "mean"), _three(std, "std")
    if min(s) <= 0:
        raise InvalidSpec(f"std must be > 0, got {s}")
    return m, s


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Clahe:
    """``cv2.createCLAHE(clip_limit, tile_grid).apply`` (``tile_grid`` is OpenCV's (columns, rows))."""

    op: ClassVar[str] = "clahe"
    clip_limit: float = 2.0
    tile_grid: tuple[int, int] = (8, 8)

    def __post_init__(self) -> None:
        try:
            grid = tuple(int(v) for v in self.tile_grid)
            clip = float(self.clip_limit)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"bad CLAHE step: {exc}") from exc
        object.__setattr__(self, "tile_grid", grid)
        object.__setattr__(self, "clip_limit", clip)
        if len(grid) != 2 or min(grid) < 1:
            raise InvalidSpec(f"tile_grid must be two positive integers, got {self.tile_grid}")
        if not math.isfinite(clip):
            raise InvalidSpec(f"clip_limit must be a finite number, got {self.clip_limit}")

    def describe(self) -> str:
        cols, rows = self.tile_grid
        return f"CLAHE clip {self.clip_limit:g}, grid {cols}x{rows} (8-bit RGB: on L of LAB)"


@dataclass(frozen=True)
class Resize:
    """``letterbox``: scale by min(H/h, W/w) into the top-left of a black H x W canvas;
    ``stretch``: to exactly H x W. OpenCV INTER_LINEAR in the image's integer type."""

    op: ClassVar[str] = "resize"
    mode: ResizeMode = "letterbox"
    height: int = 512
    width: int = 512

    def __post_init__(self) -> None:
        if self.mode not in ("letterbox", "stretch"):
            raise InvalidSpec(f"resize mode must be letterbox or stretch, got {self.mode!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
                raise InvalidSpec(f"resize {name} must be an integer in 1..16384, got {value!r}")

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def describe(self) -> str:
        how = "letterbox into" if self.mode == "letterbox" else "stretch to"
        return f"resize: {how} {self.height} x {self.width} (OpenCV INTER_LINEAR, integer pixels)"


@dataclass(frozen=True)
class Intensity:
    """``bit_depth``: x / (2^bits - 1); ``minmax``: (x - min) / (max - min) over the whole array."""

    op: ClassVar[str] = "intensity"
    mode: IntensityMode = "bit_depth"

    def __post_init__(self) -> None:
        if self.mode not in ("bit_depth", "minmax"):
            raise InvalidSpec(f"intensity mode must be bit_depth or minmax, got {self.mode!r}")

    def describe(self) -> str:
        if self.mode == "bit_depth":
            return "intensity: divide by 2^bits - 1 (255 for 8-bit, 65535 for 16-bit images)"
        return "intensity: (x - min) / (max - min) over the whole image, all channels"


@dataclass(frozen=True)
class Normalize:
    """``(x - mean) / std`` per channel; the result is the network input."""

    op: ClassVar[str] = "normalize"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        mean, std = _mean_std(self.mean, self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def describe(self) -> str:
        return f"normalize: (x - {list(self.mean)}) / {list(self.std)}"


@dataclass(frozen=True)
class ModelTransform:
    """torchvision's ``GeneralizedRCNNTransform`` (eval): normalise, then
    ``F.interpolate(scale_factor=min(min_size / short, max_size / long), mode="bilinear",
    recompute_scale_factor=True, align_corners=False)``, then zero-pad bottom/right to a multiple
    of ``size_divisible``."""

    op: ClassVar[str] = "model_transform"
    min_size: int = 800
    max_size: int = 1333
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_divisible: int = 32

    def __post_init__(self) -> None:
        mean, std = _mean_std(self.mean, self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        for name in ("min_size", "max_size", "size_divisible"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
                raise InvalidSpec(f"model_transform {name} must be an integer in 1..16384, got {value!r}")

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """The size torchvision resizes an H x W image to (eager mode: a Python float scale, then
        ``int(size * scale)`` per axis, as ``F.interpolate`` with ``recompute_scale_factor``)."""
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        return max(1, int(height * scale)), max(1, int(width * scale))

    def padded_hw(self, height: int, width: int) -> tuple[int, int]:
        d = float(self.size_divisible)
        return int(math.ceil(height / d) * d), int(math.ceil(width / d) * d)

    def describe(self) -> str:
        return (
            f"model transform (torchvision): (x - {list(self.mean)}) / {list(self.std)}, bilinear resize "
            f"to min {self.min_size} / max {self.max_size}, zero-pad to a multiple of {self.size_divisible}"
        )


Step = Clahe | Resize | Intensity | Normalize | ModelTransform
STEP_TYPES: dict[str, type] = {cls.op: cls for cls in (Clahe, Resize, Intensity, Normalize, ModelTransform)}


def _step_to_dict(step: Step) -> dict[str, Any]:
    data: dict[str, Any] = {"op": step.op}
    for key, value in asdict(step).items():
        data[key] = list(value) if isinstance(value, tuple) else value
    return data


def _step_from_dict(data: Any) -> Step:
    if not isinstance(data, dict) or "op" not in data:
        raise InvalidSpec(f"a recipe step must be an object with an 'op', got {data!r}")
    cls = STEP_TYPES.get(data["op"])
    if cls is None:
        raise InvalidSpec(f"unknown recipe step {data['op']!r}; known: {', '.join(STEP_TYPES)}")
    _check_keys(cls, data, skip=("op",))
    try:
        step: Step = cls(**{k: v for k, v in data.items() if k != "op"})
    except TypeError as exc:
        raise InvalidSpec(f"bad {data['op']} step: {exc}") from exc
    return step


# --------------------------------------------------------------------------- the recipe


def _check_grammar(steps: tuple[Step, ...]) -> None:
    """``[Clahe] Resize [Clahe] Intensity (Normalize | ModelTransform)``, at most one CLAHE."""
    ops = [s.op for s in steps]
    body = [op for op in ops if op != "clahe"]
    shape_ok = (
        ops.count("clahe") <= 1
        and len(body) == 3
        and body[:2] == ["resize", "intensity"]
        and body[2] in ("normalize", "model_transform")
        and ("clahe" not in ops or ops.index("clahe") <= 1)
    )
    if not shape_ok:
        raise InvalidSpec(
            "a recipe is [clahe] resize [clahe] intensity (normalize | model_transform), "
            f"got {' -> '.join(ops) or 'no steps'}"
        )


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing recipe: ordered steps from decoded pixels to the engine input (module doc)."""

    steps: tuple[Step, ...] = field(default_factory=lambda: (Clahe(), Resize(), Intensity(), Normalize()))
    #: where the 28 x 28 masks are pasted: ``image`` (the original resolution; the paper recipe), or
    #: ``resize`` (the resized image, boxes in its pixels, then nearest-neighbour to the original, as
    #: torchvision's transform pastes them in CHiMP)
    paste_at: PasteAt = "image"
    #: ``as_decoded`` (gray stays gray: CLAHE on the gray values) or ``rgb`` (gray images become three
    #: equal channels first, as ``cv2.imread``'s colour mode gives CHiMP: CLAHE then runs on L of LAB)
    color: ColorMode = "as_decoded"
    #: the bit depth of the images the model was trained on: 8 (16-bit images are mapped to 8 bits
    #: before the first step, so CLAHE is the 8-bit CLAHE of training) or 16 (they stay 16-bit)
    training_bit_depth: int = 8

    def __post_init__(self) -> None:
        bits = self.training_bit_depth
        if isinstance(bits, bool) or bits not in TRAINING_BIT_DEPTHS:
            raise InvalidSpec(f"training_bit_depth must be 8 or 16, got {bits!r}")
        object.__setattr__(self, "training_bit_depth", int(bits))
        if self.paste_at not in ("image", "resize"):
            raise InvalidSpec(f"paste_at must be image or resize, got {self.paste_at!r}")
        if self.color not in ("as_decoded", "rgb"):
            raise InvalidSpec(f"color must be as_decoded or rgb, got {self.color!r}")
        steps = tuple(self.steps)
        for step in steps:
            if not isinstance(step, tuple(STEP_TYPES.values())):
                raise InvalidSpec(f"not a recipe step: {step!r}")
        object.__setattr__(self, "steps", steps)
        _check_grammar(steps)
        if self.normalize is not None:
            h, w = self.resize.hw
            if h < 32 or w < 32 or h % 32 or w % 32:
                raise InvalidSpec(
                    f"the engine input {h} x {w} must be positive multiples of 32 (or add a model_transform)"
                )

    # ------------------------------------------------------------------ presets

    @classmethod
    def paper(
        cls,
        *,
        clahe: bool = True,
        clip_limit: float = 2.0,
        tile_grid: tuple[int, int] = (8, 8),
        input_size: int | tuple[int, int] = 512,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        training_bit_depth: int = 8,
    ) -> PreprocessSpec:
        """The method's recipe: CLAHE on the raw image, letterbox to S x S, /max, ImageNet mean/std;
        trained on 8-bit images unless ``training_bit_depth=16``."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        steps: list[Step] = [Clahe(clip_limit, tile_grid)] if clahe else []
        steps += [Resize("letterbox", h, w), Intensity("bit_depth"), Normalize(mean, std)]
        return cls(tuple(steps), training_bit_depth=training_bit_depth)

    @classmethod
    def chimp(
        cls,
        *,
        clip_limit: float = 2.5,
        tile_grid: tuple[int, int] = (12, 12),
        input_size: int | tuple[int, int] = (1352, 1688),
        min_size: int = 800,
        max_size: int = 1333,
        training_bit_depth: int = 8,
    ) -> PreprocessSpec:
        """Diamond's CHiMP detector: stretch to 1352 x 1688, CLAHE 12 x 12 on L of LAB (CHiMP draws the
        clip limit in [1, 4] per image; the recipe fixes it, 2.5 by default, the mean of that draw),
        min-max intensity, then torchvision's transform (800 / 1333, ImageNet): 800 x 1024 input;
        masks pasted at 1352 x 1688 and scaled to the image by nearest neighbour, as CHiMP does; gray
        images as three equal channels (CHiMP reads with ``cv2.imread``'s colour mode); trained on
        8-bit images (``cv2.imread`` gives CHiMP 8 bits)."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        return cls(
            (
                Resize("stretch", h, w),
                Clahe(clip_limit, tile_grid),
                Intensity("minmax"),
                ModelTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD, 32),
            ),
            paste_at="resize",
            color="rgb",
            training_bit_depth=training_bit_depth,
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PreprocessSpec:
        if name == "paper":
            return cls.paper(**overrides)
        if name == "chimp":
            return cls.chimp(**overrides)
        raise InvalidSpec(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")

    # ------------------------------------------------------------------ the steps

    def _find(self, cls: type) -> Any:
        return next((s for s in self.steps if isinstance(s, cls)), None)

    @property
    def clahe(self) -> Clahe | None:
        """The CLAHE step, or None (the recipe has no CLAHE)."""
        step: Clahe | None = self._find(Clahe)
        return step

    @property
    def clahe_first(self) -> bool:
        """CLAHE runs on the image as decoded (before the resize)."""
        return bool(self.steps) and isinstance(self.steps[0], Clahe)

    @property
    def resize(self) -> Resize:
        step: Resize = self._find(Resize)
        return step

    @property
    def intensity(self) -> Intensity:
        step: Intensity = self._find(Intensity)
        return step

    @property
    def normalize(self) -> Normalize | None:
        step: Normalize | None = self._find(Normalize)
        return step

    @property
    def transform(self) -> ModelTransform | None:
        step: ModelTransform | None = self._find(ModelTransform)
        return step

    @property
    def mean(self) -> tuple[float, float, float]:
        """The normalisation mean (of the Normalize or ModelTransform step, which ends every recipe)."""
        last: Normalize | ModelTransform = self.steps[-1]  # type: ignore[assignment]
        return last.mean

    @property
    def std(self) -> tuple[float, float, float]:
        last: Normalize | ModelTransform = self.steps[-1]  # type: ignore[assignment]
        return last.std

    @property
    def image_hw(self) -> tuple[int, int]:
        """The size of the image inside the engine input (torchvision's ``image_sizes``): the resize's
        H x W, or what the model transform resizes it to (before padding)."""
        t = self.transform
        return self.resize.hw if t is None else t.resized_hw(*self.resize.hw)

    @property
    def input_hw(self) -> tuple[int, int]:
        """The engine input's H x W (fixed by the recipe)."""
        t = self.transform
        return self.resize.hw if t is None else t.padded_hw(*self.image_hw)

    @property
    def input_size(self) -> int:
        """S of a square engine input (the paper recipe's); InvalidSpec for a rectangular one."""
        h, w = self.input_hw
        if h != w:
            raise InvalidSpec(f"this recipe's engine input is {h} x {w}, not square")
        return h

    @property
    def is_paper_shaped(self) -> bool:
        """``[Clahe] Resize Intensity(bit_depth) Normalize`` with CLAHE first: what the CUDA stages
        compute (CLAHE, then letterbox/stretch + normalise in one kernel)."""
        return (
            self.transform is None
            and self.intensity.mode == "bit_depth"
            and (self.clahe is None or self.clahe_first)
        )

    @property
    def preset_name(self) -> str | None:
        """``paper`` or ``chimp`` when the recipe has a preset's shape (whatever its parameters)."""
        shape = tuple(s.op for s in self.steps)
        if self.is_paper_shaped and self.resize.mode == "letterbox":
            return "paper"
        if shape == ("resize", "clahe", "intensity", "model_transform") and self.resize.mode == "stretch":
            return "chimp" if self.intensity.mode == "minmax" else None
        return None

    def with_overrides(
        self,
        *,
        clahe: bool | None = None,
        clip_limit: float | None = None,
        tile_grid: tuple[int, int] | None = None,
        input_size: int | tuple[int, int] | None = None,
        training_bit_depth: int | None = None,
    ) -> PreprocessSpec:
        """The recipe with parts replaced: CLAHE on/off (off removes the step; on adds one in front
        when there is none), its clip/grid, the resize's H x W (``input_size``: S or (H, W)), the
        bit depth of the training images."""
        steps = list(self.steps)
        if clahe is False:
            steps = [s for s in steps if not isinstance(s, Clahe)]
        elif (clahe or clip_limit is not None or tile_grid is not None) and not any(
            isinstance(s, Clahe) for s in steps
        ):
            steps.insert(0, Clahe())
        for i, s in enumerate(steps):
            if isinstance(s, Clahe):
                steps[i] = Clahe(
                    s.clip_limit if clip_limit is None else clip_limit,
                    s.tile_grid if tile_grid is None else tile_grid,
                )
            elif isinstance(s, Resize) and input_size is not None:
                h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
                steps[i] = replace(s, height=int(h), width=int(w))
        bits = self.training_bit_depth if training_bit_depth is None else training_bit_depth
        return PreprocessSpec(tuple(steps), self.paste_at, self.color, bits)

    def describe(self) -> list[str]:
        """One line per step, then the engine input."""
        lines = [f"{i}. {step.describe()}" for i, step in enumerate(self.steps, 1)]
        h, w = self.input_hw
        ih, iw = self.image_hw
        inner = "" if (ih, iw) == (h, w) else f" (image {ih} x {iw}, zero padding below/right)"
        paste = (
            ""
            if self.paste_at == "image"
            else "; masks pasted at the resized size, then nearest to the image"
        )
        first = ["0. gray images become three equal channels (RGB)"] if self.color == "rgb" else []
        bits = (
            "trained on 8-bit images: 16-bit images are mapped to 8 bits, round(v / 257), before step 1"
            if self.training_bit_depth == 8
            else "trained on 16-bit images: 16-bit images stay 16-bit (16-bit CLAHE)"
        )
        return [*first, *lines, bits, f"engine input: 1 x 3 x {h} x {w}{inner}{paste}"]

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe_version": RECIPE_VERSION,
            "steps": [_step_to_dict(s) for s in self.steps],
            "paste_at": self.paste_at,
            "color": self.color,
            "training_bit_depth": self.training_bit_depth,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """A version-3 or -2 recipe (version 2 has no ``training_bit_depth``: 8), or a version-1 spec
        (flat: the paper recipe with its parameters, trained on 8-bit images)."""
        if not isinstance(data, dict):
            raise InvalidSpec(f"PreprocessSpec must be a JSON object, got {type(data).__name__}")
        if "recipe_version" not in data and "steps" not in data:
            return cls._from_v1(data)
        version = data.get("recipe_version")
        if isinstance(version, bool) or version not in READ_VERSIONS[1:]:
            raise InvalidSpec(
                f"preprocessing recipe version {version!r} is not supported by this crystal-rt "
                f"(it reads versions {', '.join(map(str, READ_VERSIONS))}); upgrade crystal-rt"
            )
        known = {"recipe_version", "steps", "paste_at", "color"}
        if version >= 3:
            known.add("training_bit_depth")
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSpec(f"PreprocessSpec has no field(s) {', '.join(unknown)}")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise InvalidSpec("a recipe's 'steps' must be a list")
        steps_ = tuple(_step_from_dict(s) for s in steps)
        return cls(
            steps_,
            data.get("paste_at", "image"),
            data.get("color", "as_decoded"),
            data.get("training_bit_depth", 8),
        )

    @classmethod
    def _from_v1(cls, data: dict[str, Any]) -> PreprocessSpec:
        v1 = {"clahe", "clip_limit", "tile_grid", "input_size", "mean", "std"}
        unknown = sorted(set(data) - v1)
        if unknown:
            raise InvalidSpec(f"PreprocessSpec has no field(s) {', '.join(unknown)}")
        size = data.get("input_size", 512)
        if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
            raise InvalidSpec(f"input_size must be a positive multiple of 32, got {size!r}")
        try:
            return cls.paper(**data)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"bad PreprocessSpec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"PreprocessSpec is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class ModelSpec:
    """What the core graph computes: architecture, classes and the fixed output size K."""

    arch: str
    num_classes: int
    class_names: tuple[str, ...] = field(default_factory=tuple)
    max_detections: int = 100
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names) or default_class_names(self.num_classes)
        object.__setattr__(self, "class_names", names)
        if self.num_classes < 2:
            raise InvalidSpec(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if len(names) != self.num_classes:
            raise InvalidSpec(
                f"{len(names)} class names for {self.num_classes} classes "
                "(the list includes the background at index 0)"
            )
        if not 1 <= self.max_detections < 3840:
            raise InvalidSpec(f"max_detections must be in 1..3839 (TensorRT TopK), got {self.max_detections}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidSpec(f"score_threshold must be in [0, 1], got {self.score_threshold}")

    def label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict):
            raise InvalidSpec(f"ModelSpec must be a JSON object, got {type(data).__name__}")
        _check_keys(cls, data)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"bad ModelSpec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"ModelSpec is not valid JSON: {exc}") from exc


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """``("__background__", "crystal")`` for two classes, else ``class_1``, ``class_2``, ..."""
    if num_classes == 2:
        return ("__background__", "crystal")
    return ("__background__", *(f"class_{i}" for i in range(1, num_classes)))


def specs_from_metadata(
    metadata: dict[str, str], path: str | os.PathLike[str]
) -> tuple[ModelSpec, PreprocessSpec]:
    """ModelSpec and PreprocessSpec stored in a core ONNX's metadata_props."""
    missing = [k for k in (MODEL_METADATA_KEY, SPEC_METADATA_KEY) if k not in metadata]
    if missing:
        raise InvalidModel(
            f"not a crystal-rt core ONNX (metadata lacks {', '.join(missing)}); "
            "export it with crystal-rt export",
            path=path,
        )
    model = ModelSpec.from_json(metadata[MODEL_METADATA_KEY])
    return model, PreprocessSpec.from_json(metadata[SPEC_METADATA_KEY])
