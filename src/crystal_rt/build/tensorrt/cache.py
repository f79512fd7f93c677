"""The engine cache: a second identical build is a copy.

Key: SHA-256 over the TensorRT module and version, CUDA version, GPU name, compute capability,
source ONNX hash, precision route and the plan-changing options. Entries live in
``$CRYSTAL_RT_CACHE/tensorrt`` (else ``$XDG_CACHE_HOME/crystal-rt/tensorrt`` or
``~/.cache/crystal-rt/tensorrt``) as ``KEY.plan`` + ``KEY.json`` (written last, holding the plan's
SHA-256); an entry whose plan does not match is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ...runtime.artifacts import sha256_file

CACHE_FORMAT = "crystal-rt-tensorrt-cache-v1"


def engine_cache_dir() -> Path:
    root = os.environ.get("CRYSTAL_RT_CACHE")
    if root:
        return Path(root) / "tensorrt"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "crystal-rt" / "tensorrt"


def cache_key(fields: dict[str, Any]) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key: str, directory: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The cached plan and its record for ``key``, or None (missing, unreadable or not matching)."""
    folder = directory or engine_cache_dir()
    plan, record_path = folder / f"{key}.plan", folder / f"{key}.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not plan.is_file() or sha256_file(plan) != record.get("plan_sha256"):
        return None
    return plan, record


def store(key: str, plan: Path, record: dict[str, Any], directory: Path | None = None) -> Path | None:
    """Copy ``plan`` into the cache (best effort: an unwritable cache only costs the next build)."""
    folder = directory or engine_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.plan.tmp"
        shutil.copyfile(plan, tmp)
        tmp.replace(folder / f"{key}.plan")
        meta_tmp = folder / f"{key}.json.tmp"
        meta_tmp.write_text(json.dumps({**record, "plan_sha256": sha256_file(plan)}, indent=2, default=str))
        meta_tmp.replace(folder / f"{key}.json")
    except OSError:
        return None
    return folder / f"{key}.plan"
