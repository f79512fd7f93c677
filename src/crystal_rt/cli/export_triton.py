"""``crystal-rt export-triton ENGINE -o model_repository/``: a Triton Inference Server model repository.

Four models: NAME_core (the engine on Triton's onnxruntime or TensorRT backend), NAME_pre and
NAME_post (python backend, importing crystal_rt: decode + preprocess, select + paste masks) and the
ensemble NAME (IMAGE bytes in, RESULT JSON out, as POST /v1/detect answers).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..console import note
from .options import output_dir


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export-triton", help="write a Triton model repository for an engine", description=__doc__
    )
    p.add_argument("engine", help="engine folder, NAME.manifest.json, or the DIR/NAME prefix")
    p.add_argument("-o", "--output", type=output_dir, required=True, help="the model repository folder")
    p.add_argument("--name", help="model name in Triton (default: the engine's name)")
    p.add_argument("--instances", type=int, default=1, help="instances of each model (default 1)")
    p.add_argument("--gpu", action="store_true", help="run the core model on the GPU (KIND_GPU)")
    p.add_argument("--overwrite", action="store_true", help="replace these models if the folder has them")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.triton import export_triton

    out = export_triton(
        args.engine,
        args.output,
        name=args.name,
        instances=args.instances,
        gpu=args.gpu,
        overwrite=args.overwrite,
    )
    note(f"wrote a Triton model repository to {out}: tritonserver --model-repository {out}")
    return 0
