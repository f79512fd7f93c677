"""``calibrate``: core FP32 ONNX + a folder of images -> an INT8 or FP16 ONNX with its accuracy report."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .._lazy import require
from ..errors import CalibrationError, InvalidModel
from ..io.decode import list_images
from ..runtime.artifacts import sha256_file
from ..spec import specs_from_metadata
from .accuracy import AccuracyReport, compare_accuracy
from .images import CalibrationImages, held_out_sample
from .metadata import TARGETS, CalibrationInfo, copy_metadata, read_calibration
from .options import DEFAULT_HELD_OUT, DEFAULT_MAX_MAP_DROP, DEFAULT_NUM_IMAGES

PRECISIONS = ("int8", "fp16")


@dataclass
class CalibrationResult:
    output: Path
    info: CalibrationInfo
    accuracy: AccuracyReport
    accepted: bool  # within max_map_drop (False only when written anyway with force=True)


def default_target(precision: str) -> str:
    """INT8 defaults to the CPU engine (ONNX Runtime); FP16 exists only for TensorRT."""
    return "onnxruntime" if precision == "int8" else "tensorrt"


def calibrate(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    precision: str = "int8",
    target: str | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    val: str | os.PathLike[str] | None = None,
    held_out: int = DEFAULT_HELD_OUT,
    max_map_drop: float = DEFAULT_MAX_MAP_DROP,
    force: bool = False,
    threads: int | None = None,
    recursive: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[str, int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> CalibrationResult:
    """Calibrate ``model`` on ``images`` for ``precision``/``target`` and write ``output``.

    The accuracy against FP32 is measured on ``val`` (a COCO JSON with ground truth) or else on
    ``held_out`` images of the folder that calibration did not use. With ``recursive`` the images of
    the folder's sub-folders (plate/well/drop trees) count too. A graph whose mAP@0.50 drops
    by more than ``max_map_drop`` is not written unless ``force``. ``on_step(name, total)`` announces
    each stage with its image count; ``on_image()`` ticks once per image processed in it.
    """
    say = log or (lambda _msg: None)
    step = on_step or (lambda _name, _total: None)
    onnx = require("onnx", "Calibration", extra="calibrate")
    source, out = Path(model), Path(output)
    if precision not in PRECISIONS:
        raise CalibrationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    target = target or default_target(precision)
    if target not in TARGETS:
        raise CalibrationError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if precision == "fp16" and target != "tensorrt":
        raise CalibrationError("FP16 graphs are for TensorRT; ONNX Runtime on the CPU runs INT8 or FP32")
    if not source.is_file():
        raise InvalidModel("model file not found", path=source)
    if out.resolve() == source.resolve():
        raise CalibrationError("the output would overwrite the FP32 model; choose another -o", path=out)
    try:
        proto = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidModel(f"not a readable ONNX file ({type(exc).__name__})", path=source) from exc
    metadata = {p.key: p.value for p in proto.metadata_props}
    _, spec = specs_from_metadata(metadata, source)
    if read_calibration(metadata, source) is not None:
        raise CalibrationError("this graph is already calibrated; calibrate the FP32 core ONNX", path=source)

    folder = Path(images)
    if not folder.is_dir():
        raise CalibrationError("calibration image folder not found", path=folder)
    # Without a validation set, hold images out first, so that the accuracy check never sees an
    # image that calibrated the graph: those beyond --num-images, or a quarter of a small folder.
    check: list[Path] = []
    if val is None and held_out > 0:
        found = list_images([folder], recursive=recursive)
        spare = len(found) - num_images
        count = min(held_out, spare) if spare >= 1 else max(1, len(found) // 4)
        check = held_out_sample(found, count, seed)
    calib = CalibrationImages(
        folder, spec, num_images=num_images, seed=seed, exclude=check, recursive=recursive
    )
    say(f"calibrating on {len(calib)} images of {images} (seed {seed})")
    if precision == "fp16":
        from .fp16 import autocast_fp16 as convert
    elif target == "tensorrt":
        from .int8 import quantize_modelopt as convert
    else:
        from .int8 import quantize_onnxruntime as convert

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crystal-rt-calib-", dir=out.parent) as tmp:
        raw, staged = Path(tmp) / "raw.onnx", Path(tmp) / out.name
        step(f"calibrating ({precision}, {target})", len(calib))
        tool, options = convert(source, raw, calib, on_image)
        info = CalibrationInfo(
            precision=precision,
            target=target,
            method=f"{tool}: " + ", ".join(f"{k}={v}" for k, v in options.items() if k != "op_types"),
            tool=tool,
            source_onnx_sha256=sha256_file(source),
            num_images=len(calib) - len(calib.skipped),
            images_sha256=calib.fingerprint(),
            seed=seed,
            options=options,
        )
        if calib.skipped:
            say(f"skipped {len(calib.skipped)} unreadable image(s): {'; '.join(calib.skipped[:3])}")
        _write_with_metadata(onnx, raw, staged, proto, info)
        report = _measure(source, staged, val, check, threads, step, on_image)
        info = replace(info, accuracy=report.to_dict())
        if math.isnan(report.map50) and not force:
            raise CalibrationError(
                f"cannot measure the accuracy: FP32 finds nothing to compare on {report.reference}; "
                "pass a validation set with --val, more images, or --force",
                path=source,
            )
        accepted = not (report.map50_drop > max_map_drop or math.isnan(report.map50))
        if not accepted and not force:
            raise CalibrationError(
                f"the {precision} graph loses {report.map50_drop:.4f} mAP@0.50 against FP32 "
                f"({report.map50:.4f} vs {report.fp32_map50:.4f} on {report.reference}), more than "
                f"--max-map-drop {max_map_drop:g}; nothing written (calibrate on more or more typical "
                "images, or pass --force to write it anyway)",
                path=source,
            )
        _write_with_metadata(onnx, raw, staged, proto, info)
        staged.replace(out)
    say(f"wrote {out}")
    return CalibrationResult(out, info, report, accepted)


def _write_with_metadata(
    onnx: object, raw: Path, staged: Path, source_proto: object, info: CalibrationInfo
) -> None:
    model = onnx.load(str(raw))  # type: ignore[attr-defined]
    copy_metadata(source_proto, model, info)
    onnx.save(model, str(staged))  # type: ignore[attr-defined]


def _measure(
    source: Path,
    candidate: Path,
    val: str | os.PathLike[str] | None,
    check: list[Path],
    threads: int | None,
    step: Callable[[str, int], None],
    on_image: Callable[[], None] | None,
) -> AccuracyReport:
    from ..runtime.detector import Detector

    with (
        Detector.from_onnx(source, threads=threads) as fp32,
        Detector.from_onnx(candidate, threads=threads) as cand,
    ):
        if val is not None:
            from ..data.coco import load_coco

            dataset = load_coco(val)
            step("accuracy against FP32", 2 * len(dataset))
            return compare_accuracy(fp32, cand, dataset=dataset, on_image=on_image)
        if not check:
            raise CalibrationError(
                "no image to check the accuracy on: pass a validation set with --val, or --held-out > 0"
            )
        step("accuracy against FP32", 2 * len(check))
        return compare_accuracy(fp32, cand, images=check, on_image=on_image)
