"""Precision-recall plots of an evaluation report (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import MissingDependency
from ..io.writers import atomic_write_bytes
from .report import ALL, EvaluationReport

__all__ = ["write_pr_curve"]


def write_pr_curve(report: EvaluationReport, path: str | os.PathLike[str]) -> Path:
    """Precision-recall plot (one panel per IoU threshold, a line per class and "all"), written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency("matplotlib", "", "Plotting precision-recall curves") from exc
    path = Path(path)
    thresholds = list(report.iou_thresholds)
    fig = Figure(figsize=(5.0 * len(thresholds), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    axes = fig.subplots(1, len(thresholds), squeeze=False)[0]
    names = [ALL] + [name for name in report.pr_curves if name != ALL]
    for ax, t in zip(axes, thresholds, strict=True):
        for name in names:
            recall, precision = report.pr_curves.get(name, {}).get(t, (np.zeros(0), np.zeros(0)))
            if recall.size == 0:
                continue
            ax.plot(
                recall,
                precision,
                label=name,
                color="black" if name == ALL else None,
                linewidth=2.0 if name == ALL else 1.2,
                marker="." if recall.size < 2 else None,
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"mask IoU ≥ {t:g}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(path, buf.getvalue())
