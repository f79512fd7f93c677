"""The fine-tuning loop: SGD with warm-up and cosine decay over crops, periodic validation mAP
through the same inference path every engine uses, checkpoints and resume.

Output folder:
- ``last.pt`` — the latest checkpoint (model, optimiser, schedule, RNG state: ``--resume`` reads it)
- ``best.pt`` — the checkpoint with the best validation mAP@0.50 (what ``crystal-rt export`` reads)
- ``log.jsonl`` — one line per logged step and per validation
- ``config.json`` — the training configuration
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    BackendUnavailable,
    InvalidDataset,
    InvalidModel,
    InvalidOption,
    TrainingError,
)
from ..spec import ModelSpec, PreprocessSpec

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

    from ..data.coco import CocoDataset
    from ..evaluate.metrics import EvaluationReport
    from .data import CachedImage

import copy

from .._lazy import lazy_import
from ..evaluate.run import evaluate_detector
from ..models.maskrcnn import build_maskrcnn, save_checkpoint
from .augment import AugmentConfig, sample_crop
from .onnx_weights import is_onnx_source, onnx_model_info
from .recipes import RECIPES
from .weights import load_initial_weights, use_batch_norm

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch", "PyTorch models", extra="export")


NORMS = ("auto", "frozen", "batch")
# The demo model's shape (see models.maskrcnn.SLIM_OPTIONS): ResNet stages 1-3 into a 128-wide FPN,
# small heads and 16..128 px anchors; about 5.8 M parameters with a ResNet-18.
SLIM = {
    "returned_layers": [1, 2, 3],
    "fpn_channels": 128,
    "box_head_size": 256,
    "mask_head_channels": 128,
    "anchor_sizes": [16, 32, 64, 128],
}


@dataclass
class TrainConfig:
    data: str
    images: str | None
    output: str
    val_data: str | None = None
    val_images: str | None = None
    val_fraction: float = 0.1
    arch: str = "maskrcnn_resnet18_fpn"
    input_size: int = 512
    clahe: bool = True
    clip_limit: float = 2.0
    tile_grid: tuple[int, int] = (8, 8)
    slim: bool = False
    init: str | None = None
    norm: str = "auto"  # auto: trainable BatchNorm from scratch, frozen when initialised from weights
    iterations: int = 2000
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 100
    val_every: int = 250
    log_every: int = 20
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    max_detections: int = 50
    score_threshold: float = 0.5
    recipe: str = "default"  # the recipe these values came from (TrainConfig.for_recipe)
    max_minutes: float | None = None  # stop (validated, saved) once training has run this long
    patience: int | None = None  # stop after this many validations without a better mAP@0.50
    freeze_backbone: bool = False  # train the FPN, RPN and heads only (few images)
    pick_threshold: bool = False  # best.pt's operating threshold: the best-F1 one on the validation images
    scale_range: tuple[float, float] = (0.75, 1.33)  # crop rescale range (crops at several scales)
    clahe_off: float = 0.0  # fraction of crops taken without CLAHE (CLAHE on/off augmentation)
    rotate: float = 0.0  # degrees of free rotation on top of the 90-degree ones
    blur: float = 0.0  # probability of a focus blur
    brightness: float = 0.08
    contrast: tuple[float, float] = (0.75, 1.3)
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "rpn_pre_nms_top_n_test": 500,
            "rpn_post_nms_top_n_test": 200,
            "rpn_pre_nms_top_n_train": 1000,
            "rpn_post_nms_top_n_train": 500,
            "box_batch_size_per_image": 128,
        }
    )

    @classmethod
    def for_recipe(cls, recipe: str, **given: Any) -> TrainConfig:
        """A config from ``recipe``'s values (:data:`RECIPES`), with every ``given`` value that is
        not None on top (the command line passes None for an option it was not given)."""
        if recipe not in RECIPES:
            raise InvalidOption(f"unknown training recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        values = {**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None or k in required}}
        config = cls(recipe=recipe, **values)
        if recipe == "finetune" and not config.init:
            raise InvalidOption("the finetune recipe starts from a model: pass --init MODEL")
        return config

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            crop_size=self.crop_size,
            scale_range=(float(self.scale_range[0]), float(self.scale_range[1])),
            rotate=self.rotate,
            blur=self.blur,
            clahe_off=self.clahe_off,
            brightness=self.brightness,
            contrast=(float(self.contrast[0]), float(self.contrast[1])),
        )

    def builder_options(self) -> dict[str, Any]:
        return {**(SLIM if self.slim else {}), **self.model_kwargs}

    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.paper(
            clahe=self.clahe, clip_limit=self.clip_limit, tile_grid=self.tile_grid, input_size=self.input_size
        )

    def validate(self) -> None:
        checks = [
            (self.iterations >= 1, "--iterations must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (32 <= self.crop_size <= self.input_size, "--crop-size must be between 32 and --input-size"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.val_fraction < 1, "--val-fraction must be in [0, 1)"),
            (self.norm in NORMS, f"--norm must be one of {', '.join(NORMS)}"),
            (self.val_every >= 1 and self.log_every >= 1, "--val-every and --log-every must be >= 1"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be positive"),
            (self.patience is None or self.patience >= 1, "--patience must be at least 1"),
            (0 <= self.rotate <= 180 and 0 <= self.blur <= 1, "rotate must be in [0, 180], blur in [0, 1]"),
            (0 < self.scale_range[0] <= self.scale_range[1], "the crop scale range must be 0 < low <= high"),
            (0 <= self.clahe_off <= 1, "--clahe-off must be a fraction in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOption(message)


@dataclass
class TrainResult:
    output: Path
    best: Path
    last: Path
    iterations: int
    best_map50: float
    final: dict[str, Any]
    seconds: float


@dataclass
class Hooks:
    """Callbacks for progress reporting (the CLI feeds a progress bar and log lines from these)."""

    on_start: Callable[[int, int], None] = lambda start, total: None
    on_step: Callable[[int, dict[str, float]], None] = lambda it, losses: None
    on_validation: Callable[[int, dict[str, Any]], None] = lambda it, metrics: None
    on_message: Callable[[str], None] = lambda text: None
    on_cache: Callable[[int], Callable[[], None]] = lambda total: lambda: None


def split_ids(dataset: CocoDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    ids = [im.id for im in dataset.images]
    if fraction <= 0 or len(ids) < 2:
        return ids, []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(len(ids) * fraction)))  # keep one to train on
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def _device(name: str) -> Any:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"--device {name}: no CUDA device is available to PyTorch here")
    return torch.device(name)


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup:
            return 0.001 + (1 - 0.001) * step / max(1, config.warmup)
        progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _config_for_onnx(config: TrainConfig, hooks: Hooks) -> TrainConfig:
    """An ONNX to start from says its architecture (metadata) and whether it is the slim demo shape."""
    if config.init is None or not is_onnx_source(config.init):
        return config
    info = onnx_model_info(config.init)
    arch = str(info.get("arch") or config.arch)
    slim = config.slim or bool(info.get("slim"))
    if arch != config.arch or slim != config.slim:
        hooks.on_message(f"{config.init}: a {'slim ' if slim else ''}{arch}, as the graph says")
    return replace(config, arch=arch, slim=slim)


def picked_threshold(report: EvaluationReport) -> float:
    """The best-F1 score threshold of a validation report, rounded down to 0.01 so the detection
    it was found at stays above it."""
    return math.floor(100.0 * report.best_f1["score_threshold"] + 1e-9) / 100.0


def build_model(config: TrainConfig, num_classes: int, hooks: Hooks) -> tuple[MaskRCNN, str]:
    model = build_maskrcnn(
        config.arch,
        num_classes,
        preprocess=config.preprocess(),
        max_detections=config.max_detections,
        **config.builder_options(),
    )
    norm = config.norm
    if config.init:
        report = load_initial_weights(model, config.init)
        hooks.on_message(report.describe())
        if norm == "auto":
            norm = "batch" if report.backbone_only else "frozen"
    elif norm == "auto":
        norm = "batch"
    if norm == "batch":
        use_batch_norm(model)
    return model, norm


def _to_targets(samples: list[Any], device: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    images = [torch.from_numpy(s.image).to(device) for s in samples]
    targets = [
        {
            "boxes": torch.from_numpy(s.boxes).to(device),
            "labels": torch.from_numpy(s.labels).to(device),
            "masks": torch.from_numpy(s.masks).to(device),
        }
        for s in samples
    ]
    return images, targets


def validate(
    model: MaskRCNN, config: TrainConfig, model_spec: ModelSpec, dataset: CocoDataset, ids: list[int]
) -> EvaluationReport:
    """Score the current weights on the validation images through the Detector path (CPU)."""

    from ..models.core import CoreMaskRCNN
    from ..models.reference import torch_detector

    snapshot = copy.deepcopy(model).cpu().eval()
    core = CoreMaskRCNN.for_recipe(snapshot, config.preprocess(), config.max_detections)
    detector = torch_detector(core, model_spec, config.preprocess())
    report, _ = evaluate_detector(detector, dataset, ids, score_threshold=config.score_threshold)
    return report


def _save(
    path: Path,
    model: MaskRCNN,
    config: TrainConfig,
    model_spec: ModelSpec,
    extra: dict[str, Any],
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_checkpoint(
        tmp,
        model,
        model_spec,
        config.preprocess(),
        extra={"train": extra},
        model_kwargs=config.builder_options(),
    )
    os.replace(tmp, path)


def train(config: TrainConfig, *, resume: bool = False, hooks: Hooks | None = None) -> TrainResult:
    """Fine-tune a Mask R-CNN as ``config`` says; returns where the checkpoints are."""

    from ..data.coco import load_coco
    from .data import cache_dataset

    started = time.perf_counter()  # --max-minutes counts the image preparation too
    hooks = hooks or Hooks()
    config.validate()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    start_state: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise InvalidOption("nothing to resume: no last.pt", path=out)
        from ..models.maskrcnn import read_torch_file

        payload = read_torch_file(last_path, "last.pt")
        start_state = payload.get("train")
        if not isinstance(start_state, dict):
            raise InvalidModel("last.pt has no training state to resume from", path=last_path)
        saved = dict(start_state["config"])
        saved["tile_grid"] = tuple(saved["tile_grid"])
        saved["iterations"] = config.iterations  # resuming may extend the run
        saved["output"] = config.output  # the folder resumed from, wherever the run started
        if config.max_minutes is not None:  # a time limit is this invocation's, when given
            saved["max_minutes"] = config.max_minutes
        config = TrainConfig(**saved)

    if start_state is None:
        config = _config_for_onnx(config, hooks)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    dataset = load_coco(config.data, config.images)
    if not len(dataset):
        raise InvalidDataset("the dataset has no images", path=config.data)
    if config.val_data:
        train_set, train_ids = dataset, [im.id for im in dataset.images]
        val_set = load_coco(config.val_data, config.val_images)
        val_ids = [im.id for im in val_set.images]
    else:
        train_set, val_set = dataset, dataset
        train_ids, val_ids = split_ids(dataset, config.val_fraction, config.seed)
    class_names = train_set.class_names
    model_spec = ModelSpec(
        arch=config.arch,
        num_classes=len(class_names) + 1,
        class_names=("__background__", *class_names),
        max_detections=config.max_detections,
        score_threshold=config.score_threshold,
    )
    if start_state is None:
        model, norm = build_model(config, model_spec.num_classes, hooks)
    else:  # last.pt holds the weights and the norm --init resolved to: --init need not exist now
        resumed = replace(config, init=None, norm=str(start_state.get("norm", config.norm)))
        model, norm = build_model(resumed, model_spec.num_classes, hooks)
        model.load_state_dict(payload["state_dict"], strict=False)
    model.to(device)
    model.transform.min_size = (config.crop_size,)
    model.transform.max_size = config.crop_size

    hooks.on_message(
        f"{len(train_ids)} training and {len(val_ids)} validation images; classes: {', '.join(class_names)}; "
        f"{config.arch} at {config.input_size} px, CLAHE {'on' if config.clahe else 'off'}, norm {norm}, "
        f"device {device}"
    )
    cached: list[CachedImage] = cache_dataset(
        train_set,
        train_ids,
        config.preprocess(),
        on_image=hooks.on_cache(len(train_ids)),
        keep_plain=config.clahe_off > 0,
    )
    if config.freeze_backbone:
        for param in model.backbone.body.parameters():
            param.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    rng = np.random.default_rng(config.seed)
    start, best_map50 = 0, -1.0
    if start_state is not None:
        optimizer.load_state_dict(start_state["optimizer"])
        scheduler.load_state_dict(start_state["scheduler"])
        start = int(start_state["iteration"])
        best_map50 = float(start_state.get("best_map50", -1.0))
        rng = np.random.default_rng([config.seed, start])
    augment = config.augment()
    stale = 0  # validations since the last better one (patience)
    done = config.iterations
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    log = (out / "log.jsonl").open("a")

    def state(iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": asdict(config),
            "norm": norm,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_map50": best_map50,
        }

    t0 = time.perf_counter()
    hooks.on_start(start, config.iterations)
    final: dict[str, Any] = {}
    model.train()
    try:
        for iteration in range(start + 1, config.iterations + 1):
            picks = rng.integers(0, len(cached), config.batch_size)
            batch = [sample_crop(rng, cached[int(i)], augment) for i in picks]
            images, targets = _to_targets(batch, device)
            losses = model(images, targets)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[union-attr]
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            values = {k: float(v.detach()) for k, v in losses.items()}
            values["loss"] = float(total.detach())  # type: ignore[union-attr]
            values["lr"] = float(optimizer.param_groups[0]["lr"])
            if not all(math.isfinite(v) for v in values.values()):
                raise TrainingError(
                    f"the loss became {values['loss']} at iteration {iteration}; lower --lr and --resume"
                )
            hooks.on_step(iteration, values)
            if iteration % config.log_every == 0:
                log.write(json.dumps({"iteration": iteration, **values}) + "\n")
                log.flush()
            out_of_time = (
                config.max_minutes is not None and time.perf_counter() - started >= 60.0 * config.max_minutes
            )
            last = iteration == config.iterations or out_of_time
            if iteration % config.val_every == 0 or last:
                metrics: dict[str, Any] = {"iteration": iteration}
                if val_ids:
                    report = validate(model, config, model_spec, val_set, val_ids)
                    model.train()
                    summary = report.to_dict()
                    keys = ("map50", "map65", "coco_segm_ap", "precision", "recall")
                    metrics.update({k: summary[k] for k in keys})
                    score = metrics["map50"] if metrics["map50"] is not None else -1.0
                else:
                    score = float(iteration)  # no validation set: the latest is the best
                improved = score > best_map50
                stale = 0 if improved else stale + 1
                best_spec = model_spec
                if improved:
                    best_map50 = score
                    if config.pick_threshold and val_ids and report.best_f1:
                        best_spec = replace(model_spec, score_threshold=picked_threshold(report))
                        metrics["score_threshold"] = best_spec.score_threshold
                metrics["best"] = improved
                log.write(json.dumps({"validation": metrics}) + "\n")
                log.flush()
                hooks.on_validation(iteration, metrics)
                _save(last_path, model, config, model_spec, state(iteration))
                if improved:
                    _save(best_path, model, config, best_spec, {**state(iteration), "optimizer": {}})
                final = metrics
                stop = out_of_time or (config.patience is not None and stale >= config.patience)
                if stop and iteration < config.iterations:
                    why = (
                        f"{config.max_minutes:g} min"
                        if out_of_time
                        else f"{stale} validations without a better mAP"
                    )
                    hooks.on_message(f"stopped at step {iteration} of {config.iterations}: {why}")
                    done = iteration
                    break
    finally:
        log.close()
    return TrainResult(
        output=out,
        best=best_path,
        last=last_path,
        iterations=done,
        best_map50=best_map50,
        final=final,
        seconds=time.perf_counter() - t0,
    )
