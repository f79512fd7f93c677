"""Rich tables, a matplotlib (Agg) plot and the JSON file for a ``crystal-rt bench`` report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from ..console import latency_table
from . import BENCH_STAGES

STAT_ROWS = ("p50", "p90", "p99", "min", "max")


def latency_tables(report: dict[str, Any]) -> Group:
    """Stage percentiles (reusing console.latency_table), engine only, throughput, cold start, memory."""

    stages = report["stages"]
    shown = [s for s in BENCH_STAGES if s != "total"]  # end_to_end = total + encode, measured around
    n = int(stages["end_to_end"].get("n", 0))
    rows = [(stat, "", {s: stages[s].get(stat, 0.0) for s in shown}) for stat in STAT_ROWS]
    parts: list[Any] = [
        latency_table(
            f"{len(report['images'])} image(s) x {report['runs']} runs = {n} samples per stage, ms "
            f"(ORT intra-op threads {report['threads']})",
            rows,
            "",
            shown,
            name_width=5,
        )
    ]

    eng = report["engine_only"]
    t = Table(title="engine only (backend.infer on a fixed preprocessed tensor), ms", title_justify="left")
    for col in ("samples", *STAT_ROWS):
        t.add_column(col, justify="right")
    t.add_row(str(eng.get("n", 0)), *(f"{eng.get(s, 0.0):.1f}" for s in STAT_ROWS))
    parts.append(t)

    if report.get("throughput"):
        t = Table(title="throughput: W threads calling one Detector", title_justify="left")
        for col in ("threads", "ORT intra-op", "images", "seconds", "images/s", "ms/image"):
            t.add_column(col, justify="right")
        for row in report["throughput"]:
            t.add_row(
                str(row["workers"]),
                str(row["intra_op_threads"]),
                str(row["images"]),
                f"{row['seconds']:.2f}",
                f"{row['images_per_s']:.2f}",
                f"{row['ms_per_image']:.1f}",
            )
        parts.append(t)

    t = Table(title="cold start and memory", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    cold = report.get("cold_start", {})
    if cold.get("runs"):
        spawn = cold["spawn_to_result_s"]
        first = cold["runs"][0]
        t.add_row(
            f"cold start: spawn -> first result (p50 of {spawn['n']}, s)",
            f"{spawn['p50']:.2f} (min {spawn['min']:.2f}, max {spawn['max']:.2f})",
        )
        t.add_row(
            "  child: import / load / first detect (s, 1st run)",
            f"{first['import_s']:.2f} / {first['load_s']:.2f} / {first['first_detect_s']:.2f}",
        )
        t.add_row("  child peak RSS (MiB, torch-free)", f"{cold['peak_rss_mb']:.0f}")
        t.add_row("  torch imported in the child", str(cold["torch_imported"]))
    else:
        t.add_row("cold start", "skipped (--cold-starts 0)")
    mem = report["memory"]
    t.add_row("bench process peak RSS (MiB)", f"{mem['peak_rss_mb']:.0f}")
    gpu = mem.get("gpu_memory_mb")
    t.add_row("GPU memory (MiB)", f"{gpu:.0f}" if gpu is not None else str(mem.get("gpu")))
    parts.append(t)
    return Group(*parts)


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    from ..io.writers import atomic_write_bytes

    return atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


def write_plot(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per-stage latency distributions (box plots, log scale) and throughput vs threads, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples_ms"]
    stages = [s for s in BENCH_STAGES if samples.get(s)]
    sweep = report.get("throughput") or []
    ncols = 2 if sweep else 1
    fig, axes = plt.subplots(1, ncols, figsize=(10 if sweep else 7, 4), squeeze=False)
    ax = axes[0][0]
    data = [samples[s] for s in stages]
    labels = list(stages)
    if report["engine_only"].get("samples_ms"):
        data.append(report["engine_only"]["samples_ms"])
        labels.append("engine only")
    ax.boxplot(data, orientation="horizontal", whis=(0, 100))
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("ms (log scale; whiskers: min and max)")
    ax.set_title(f"per-stage latency, {len(report['images'])} image(s) x {report['runs']} runs")
    ax.grid(True, axis="x", alpha=0.3)
    if sweep:
        ax2 = axes[0][1]
        workers = [r["workers"] for r in sweep]
        ax2.bar([str(w) for w in workers], [r["images_per_s"] for r in sweep], color="tab:green")
        ax2.set_xlabel("threads calling one Detector (ORT intra-op = cores // threads)")
        ax2.set_ylabel("images/s")
        ax2.set_title("throughput")
        ax2.grid(True, axis="y", alpha=0.3)
    engine = Path(report["engine"]).name
    fig.suptitle(f"crystal-rt bench {engine} - {report['environment']['cpu']}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
