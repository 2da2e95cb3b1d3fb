"""PNG plots of a benchmark report: time ratios, generation speedups and per-layer parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# Reference lines drawn on the plots: the targets the benchmark is judged against.
TIME_RATIO_TARGET = 1.10
CACHED_SPEEDUP_TARGET = 10.0


def _barh(
    names: list[str],
    values: list[float],
    title: str,
    target: tuple[float, str],
    path: Path,
    log: bool = False,
):
    figure, axis = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
    axis.barh(range(len(names)), values, color="tab:blue")
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.invert_yaxis()
    value, meaning = target
    axis.axvline(value, color="tab:red", linestyle="--", label=f"target {value:g} ({meaning})")
    axis.axvline(1.0, color="gray", linewidth=0.8)
    if log:
        axis.set_xscale("log")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_ratios(report: dict[str, Any], folder: Path) -> list[Path]:
    """Draw time ratios and cached-generation speedups; return the files written."""
    ratios = [f for f in report["figures"] if f["unit"] == "ratio"]
    times = [f for f in ratios if not f["name"].endswith("cached_speedup")]
    speedups = [f for f in ratios if f["name"].endswith("cached_speedup")]
    written = []
    if times:
        path = folder / "time_ratios.png"
        _barh(
            [f["name"].replace(".ratio.", " ") for f in times],
            [f["value"] for f in times],
            "Median time ratios (below 1: numerator faster)",
            (TIME_RATIO_TARGET, "Penzai / Flax; 1 for Flax / PyTorch"),
            path,
        )
        written.append(path)
    if speedups:
        path = folder / "generation_speedup.png"
        _barh(
            [
                f["name"].replace(".generate.", " ").removesuffix(".cached_speedup")
                for f in speedups
            ],
            [f["value"] for f in speedups],
            "Per-token speedup of KV-cached generation over full recomputation",
            (CACHED_SPEEDUP_TARGET, "at least"),
            path,
            log=True,
        )
        written.append(path)
    return written


def plot_parity(report: dict[str, Any], folder: Path) -> list[Path]:
    """Draw per-layer max absolute differences, one line per compared pair."""
    rows = report.get("parity") or []
    if not rows:
        return []
    figure, axis = plt.subplots(figsize=(8, 4.5))
    pairs = dict.fromkeys(f"{row['first']} vs {row['second']}" for row in rows)
    for pair in pairs:
        selected = [row for row in rows if f"{row['first']} vs {row['second']}" == pair]
        # Bit-equal layers have difference 0, which a log axis cannot show; draw them at 1e-9.
        values = [max(row["max_abs_diff"], 1e-9) for row in selected]
        axis.plot([row["layer"] for row in selected], values, marker="o", label=pair)
    axis.set_yscale("log")
    axis.set_ylabel("max |difference| (1e-9 = equal)")
    axis.set_title("Per-layer parity on the tiny Hugging Face fixture")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = folder / "parity_layers.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def write_plots(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write every plot of the report into `folder` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return plot_ratios(report, folder) + plot_parity(report, folder)
