"""Export a torchvision Mask R-CNN to the core ONNX, lint it, and validate it on ONNX Runtime.

Contract (docs/contract.md): input ``images`` float32 [1, 3, H, W] (the recipe's ``input_hw``); outputs
``boxes`` [K, 4], ``scores`` [K], ``labels`` [K] (int64), ``masks`` [K, 28, 28]; opset 17; ``dynamo=False``;
no If / Loop / input Resize; PreprocessSpec and ModelSpec in ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import, require
from .._version import __version__
from ..errors import ExportError, ParityError
from ..evaluate.parity import ParityReport, Tolerances, compare_backends, worst_failure
from ..models.core import INPUT_NAME, OUTPUT_NAMES, CoreMaskRCNN, export_friendly_nms
from ..models.maskrcnn import LoadedModel
from ..spec import MODEL_METADATA_KEY, SPEC_METADATA_KEY, ModelSpec, PreprocessSpec
from .lint import lint_onnx

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch", "PyTorch models", extra="export")


OPSET = 17
# The in-graph score threshold (torchvision's box_score_thresh); the runtime threshold is applied after.
VALIDATION_SCORE_THRESHOLD = 0.05
# Unmatched detections with no borderline reason allowed per image: 2 of 100. A proposal at the
# edge of the RPN's top-N or NMS on one side only gives one (a seeded R50-FPN's CHiMP export: one
# extra detection at score 0.31 among 100, no neighbour near the NMS threshold); a fault gives many.
UNMATCHED_FRACTION = 0.02


@dataclass
class ExportResult:
    path: Path
    model_spec: ModelSpec
    preprocess: PreprocessSpec
    num_nodes: int
    parity: ParityReport | None


def validation_images(size: int) -> list[tuple[str, np.ndarray]]:
    """Synthetic drops: square, landscape (letterbox padding below) and portrait (padding right),
    ``size`` px on their long side.

    No constant image: through random weights it gives a translation-invariant field of near-equal
    scores, where TopK/NMS tie-breaking differs between runtimes. The zero-detection path is
    checked separately (``check_empty_path``).
    """
    from ..data.synthetic import make_drop

    return [
        ("synthetic-drop-0", make_drop(0, size, size).image),
        ("synthetic-drop-1", make_drop(1, size * 3 // 4, size).image),
        ("synthetic-drop-2", make_drop(2, size, size * 5 // 8).image),
    ]


def trace_to_onnx(core: CoreMaskRCNN, tensor: np.ndarray, path: Path) -> None:
    """``torch.onnx.export`` of the core module: TorchScript tracing (dynamo=False), opset 17."""

    with warnings.catch_warnings(), torch.no_grad(), export_friendly_nms():
        warnings.simplefilter("ignore")  # TracerWarnings about constant shapes are expected here
        torch.onnx.export(
            core,
            (torch.from_numpy(tensor),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def check_empty_path(core: CoreMaskRCNN, tensor: np.ndarray, output: Path) -> None:
    """Export the same graph with a score threshold nothing passes and run it on ONNX Runtime.

    Zero detections means empty tensors through RoiAlign, the mask head and the padding; both
    PyTorch and ONNX Runtime must return K all-zero rows without error.
    """

    from ..models.core import run_core
    from ..runtime.backends.onnxruntime import OnnxRuntimeBackend

    saved = core.roi_heads.score_thresh
    core.roi_heads.score_thresh = 1.0
    probe = output.with_name(output.stem + ".empty-probe.onnx")
    try:
        trace_to_onnx(core, tensor, probe)
        torch_scores = run_core(core, torch.from_numpy(tensor))[1].numpy()
        try:
            backend = OnnxRuntimeBackend(probe)
            ort_out = backend.infer(tensor)
        except Exception as exc:
            raise ParityError(f"with zero detections ONNX Runtime fails: {exc}", path=output) from exc
    finally:
        core.roi_heads.score_thresh = saved
        probe.unlink(missing_ok=True)
    if np.any(torch_scores) or np.any(ort_out.scores) or np.any(ort_out.boxes) or np.any(ort_out.masks):
        raise ParityError("with zero detections the outputs are not all-zero padding", path=output)


def export_core_onnx(
    loaded: LoadedModel,
    output: str | Path,
    *,
    input_size: int | tuple[int, int] | None = None,
    max_detections: int | None = None,
    validate: bool = True,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
    tolerances: Tolerances | None = None,
) -> ExportResult:
    """Write the core ONNX for ``loaded`` to ``output`` and (by default) check it against PyTorch.

    Raises LintError for an op TensorRT cannot import and ParityError (carrying the ParityReport),
    naming the worst detection, when ONNX Runtime does not reproduce the PyTorch model.
    """
    require("torch", "Exporting a model")
    onnx = require("onnx", "Exporting a model")
    output = Path(output)
    pre = loaded.preprocess if input_size is None else loaded.preprocess.with_overrides(input_size=input_size)
    spec = (
        loaded.model_spec
        if max_detections is None
        else dataclasses.replace(loaded.model_spec, max_detections=max_detections)
    )
    core = CoreMaskRCNN.for_recipe(loaded.model, pre, spec.max_detections)

    from ..runtime.preprocess import preprocess

    images = list(images) if images is not None else validation_images(max(pre.resize.hw))
    trace_input = preprocess(images[0][1], pre).tensor
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        trace_to_onnx(core, trace_input, tmp)
        model = onnx.load(str(tmp))
    except Exception as exc:  # torch.onnx raises many types; the user needs one sentence
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", path=output
        ) from exc
    tmp.unlink(missing_ok=True)
    del model.metadata_props[:]
    for key, value in (
        (SPEC_METADATA_KEY, pre.to_json()),
        (MODEL_METADATA_KEY, spec.to_json()),
        ("crystal_rt.version", __version__),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "crystal-rt"
    model.producer_version = __version__
    onnx.checker.check_model(model)
    lint_onnx(model)
    onnx.save(model, str(output))

    parity = None
    if validate:
        parity = validate_onnx(core, spec, pre, output, images, tolerances=tolerances)
        check_empty_path(core, trace_input, output)
        if not parity.ok:
            raise ParityError(
                f"ONNX Runtime does not reproduce PyTorch ({len(parity.failures)} problem(s)); worst: "
                f"{worst_failure(parity)}",
                report=parity,
                path=output,
            )
    return ExportResult(output, spec, pre, len(model.graph.node), parity)


def validate_onnx(
    core: CoreMaskRCNN,
    spec: ModelSpec,
    pre: PreprocessSpec,
    onnx_path: Path,
    images: Sequence[tuple[str, np.ndarray]],
    *,
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """ONNX Runtime on ``onnx_path`` against ``core`` in PyTorch, both on the same CPU-made inputs
    of ``images``: detections matched by box IoU, boxes and scores compared, masks judged on the
    matched rows' 28 x 28 probabilities and on the pasted pixels clear of the 0.5 threshold
    (``evaluate.parity.compare_outputs``). NMS ties are judged at the model's own NMS threshold."""
    from ..models.torch_backend import TorchBackend
    from ..runtime.backends.onnxruntime import OnnxRuntimeBackend

    if tolerances is None:
        tolerances = Tolerances(
            nms_iou=float(getattr(core.roi_heads, "nms_thresh", 0.5)),
            unmatched_fraction=UNMATCHED_FRACTION,
            score_ties=True,
        )
    candidate = OnnxRuntimeBackend(onnx_path)
    try:
        return compare_backends(
            TorchBackend(core),
            candidate,
            images,
            model=spec,
            preprocess=pre,
            score_threshold=VALIDATION_SCORE_THRESHOLD,
            tolerances=tolerances,
        )
    finally:
        candidate.close()
