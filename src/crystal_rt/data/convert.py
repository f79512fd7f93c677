"""Convert annotations (COCO, Labelme, mask folders) into one COCO JSON for training and evaluation.

Several inputs, even of different formats, are merged: categories are matched by name, and the
first input keeps its image, annotation and category ids while later ones are renumbered after
them. Every image must exist. In the written JSON, ``file_name`` is relative to the JSON's own
folder when the image lies under it, and absolute otherwise, so the images folder to pass to
``crystal-rt train`` / ``evaluate`` (``--images``) is always the JSON's folder, which is also what
:func:`~crystal_rt.data.coco.load_coco` uses by default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidDataset
from .coco import CocoDataset, load_coco
from .fields import read_json
from .labelme import labelme_to_coco
from .mask_folders import read_mask_folders

FORMATS = ("coco", "labelme", "masks")
_WHAT = (
    "expected a COCO .json, a Labelme .json or a folder of them, or a mask-folder root "
    "(NAME/images + NAME/masks)"
)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"coco"``, ``"labelme"`` or ``"masks"`` for a file or folder, by its content."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise InvalidDataset(f"cannot tell the annotation format; {_WHAT}", path=path)
        return _json_format(path)
    if not path.is_dir():
        raise InvalidDataset("file or folder not found", path=path)
    if (path / "images").is_dir() or (path / "masks").is_dir():
        return "masks"
    children = sorted(c for c in path.iterdir() if not c.name.startswith("."))
    if any((c / "masks").is_dir() or (c / "images").is_dir() for c in children if c.is_dir()):
        return "masks"
    jsons = [c for c in children if c.suffix.lower() == ".json" and c.is_file()]
    if jsons and _json_format(jsons[0]) == "labelme":
        return "labelme"
    if jsons:
        raise InvalidDataset(f"holds COCO JSON {jsons[0].name}: pass that file itself", path=path)
    raise InvalidDataset(f"cannot tell the annotation format; {_WHAT}", path=path)


def _json_format(path: Path) -> str:
    data = read_json(path)
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    if isinstance(data, dict) and "shapes" in data:
        return "labelme"
    raise InvalidDataset("neither COCO (images + annotations) nor Labelme (shapes) JSON", path=path)


def convert(
    inputs: Sequence[Path],
    output: Path,
    fmt: str = "auto",
    images_out: Path | None = None,
    class_name: str = "crystal",
) -> CocoDataset:
    """Read ``inputs``, merge them, write the COCO JSON ``output`` and return it as a dataset.

    ``fmt`` is ``auto`` (each input detected by :func:`detect_format`) or one of :data:`FORMATS`.
    Images embedded in Labelme files without a readable ``imagePath`` are written to
    ``images_out`` (default: ``OUTPUT-STEM_images`` next to the output). ``class_name`` is the
    category of mask-folder instances (COCO and Labelme inputs carry their own). The returned
    dataset's ``images_dir`` is the output's folder.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise InvalidDataset(f"unknown format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    if not inputs:
        raise InvalidDataset("no inputs given")
    output = Path(os.path.abspath(output))
    formats = [detect_format(p) if fmt == "auto" else fmt for p in inputs]
    labelme_inputs = [p for p, f in zip(inputs, formats, strict=True) if f == "labelme"]
    extract_to = images_out if images_out is not None else output.parent / f"{output.stem}_images"
    datasets: list[CocoDataset] = []
    for path, kind in zip(inputs, formats, strict=True):
        if kind == "coco":
            datasets.append(load_coco(path))
        elif kind == "masks":
            datasets.append(read_mask_folders(path, class_name))
        elif labelme_inputs:  # all Labelme inputs together, at the first one's place
            datasets.append(labelme_to_coco(labelme_inputs, extract_to))
            labelme_inputs = []
    data = _merge(datasets, output.parent)
    if not data["images"]:
        raise InvalidDataset("no images found in " + ", ".join(str(p) for p in inputs))
    dataset = CocoDataset.from_dict(data, source=output, images_dir=output.parent)
    dataset.write(output)
    return dataset


def _merge(datasets: list[CocoDataset], folder: Path) -> dict[str, Any]:
    """One COCO dict; file names relative to ``folder`` where possible, else absolute."""
    merged: dict[str, Any] = {**datasets[0].to_dict(), "images": [], "annotations": [], "categories": []}
    category_ids: dict[str, int] = {}
    next_image = next_annotation = 1
    for dataset in datasets:
        first = dataset is datasets[0]
        categories = _merge_categories(dataset, category_ids, merged["categories"], keep_ids=first)
        image_ids: dict[int, int] = {}
        for index, record in enumerate(dataset.images):
            image_ids[record.id] = record.id if first else next_image
            merged["images"].append(
                {
                    "id": image_ids[record.id],
                    "file_name": _file_name(dataset, index, record.id, folder),
                    "width": record.width,
                    "height": record.height,
                }
            )
            next_image = max(next_image, image_ids[record.id] + 1)
        for record in dataset.images:
            for ann in dataset.annotations(record.id):
                new_id = ann["id"] if first else next_annotation
                next_annotation = max(next_annotation, new_id + 1)
                ann.update(
                    id=new_id, image_id=image_ids[record.id], category_id=categories[ann["category_id"]]
                )
                merged["annotations"].append(ann)
    merged["categories"].sort(key=lambda c: c["id"])
    return merged


def _merge_categories(
    dataset: CocoDataset, category_ids: dict[str, int], out: list[dict[str, Any]], *, keep_ids: bool
) -> dict[int, int]:
    """Map the dataset's category ids to merged ids, adding new names (the first keeps its ids)."""
    mapping: dict[int, int] = {}
    for category in dataset.categories:
        if category.name not in category_ids:
            new_id = category.id if keep_ids else max((c["id"] for c in out), default=0) + 1
            category_ids[category.name] = new_id
            out.append({"id": new_id, "name": category.name})
        mapping[category.id] = category_ids[category.name]
    return mapping


def _file_name(dataset: CocoDataset, index: int, image_id: int, folder: Path) -> str:
    path = Path(os.path.abspath(dataset.image_path(image_id)))
    if not path.is_file():
        raise InvalidDataset(f"images[{index}].file_name: image file {path} not found", path=dataset.source)
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)
