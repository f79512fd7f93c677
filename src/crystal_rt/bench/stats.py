"""Latency summaries: numpy percentiles (linear interpolation, numpy's default) plus min/max/mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_import("numpy", "Array processing")


PERCENTILES = (50, 90, 99)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """``p50``/``p90``/``p99`` (``numpy.percentile``, method "linear"), ``min``, ``max``, ``mean``, ``n``.

    An empty sequence gives ``{"n": 0}`` only.
    """

    if len(samples) == 0:
        return {"n": 0}
    arr = np.asarray(samples, dtype=np.float64)
    values = np.percentile(arr, PERCENTILES)
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}
    out.update(min=float(arr.min()), max=float(arr.max()), mean=float(arr.mean()), n=int(arr.size))
    return out
