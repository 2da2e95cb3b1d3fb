"""Run every benchmark part for each preset and collect one report (figures, parity, notes)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.environment import run_info
from benchmarks.settings import BenchSettings
from benchmarks.speed import speed_figures
from benchmarks.speed_generation import generation_figures
from benchmarks.timing import Figure, measure_matmul_rate, peak_rss_bytes

logger = logging.getLogger(__name__)


def run_benchmarks(settings: BenchSettings, fixture_dir: Path | None = None) -> dict[str, Any]:
    """Measure every preset in `settings` and, given a fixture folder, the parity report.

    Returns:
      A JSON-ready dict: `run` (date, machine, versions), `settings`, `figures` (each a
      name, value, unit and note), `parity` (per-layer max absolute differences) and
      `notes` (what was skipped or disagreed).
    """
    logger.info("Benchmark settings: %s", settings)
    matmul_rate, matmul_timing = measure_matmul_rate(settings.matmul_size, settings.repeats)
    figures = [
        Figure(
            "machine.matmul_float32",
            matmul_rate,
            "FLOP/s",
            f"jit'ed {settings.matmul_size}x{settings.matmul_size} matmul, median of "
            f"{len(matmul_timing.times_s)}",
        )
    ]
    notes: list[str] = []
    for name in tqdm(settings.presets, desc="presets", unit="preset"):
        preset_figures, preset_notes = _run_preset(name, settings, matmul_rate)
        figures += preset_figures
        notes += preset_notes
    parity: list[dict[str, Any]] = []
    if fixture_dir is not None:
        from benchmarks.parity_report import parity_rows

        parity = [row.to_dict() for row in parity_rows(fixture_dir)]
    else:
        notes.append("parity report skipped: no fixture folder given")
    return {
        "run": run_info(),  # read last, so it shows the environment the run ended with
        "settings": _settings_dict(settings),
        "figures": [figure.to_dict() for figure in figures],
        "parity": parity,
        "notes": notes,
    }


def _run_preset(
    name: str, settings: BenchSettings, matmul_rate: float
) -> tuple[list[Figure], list[str]]:
    config = settings.config(name)
    label = settings.label(name)
    logger.info("Preset %s: %s", label, config)
    figures: list[Figure] = []
    notes: list[str] = []
    if {"forward", "train"} & set(settings.parts):
        figures += speed_figures(label, config, settings, matmul_rate)
    if "generation" in settings.parts:
        generation, generation_notes = generation_figures(label, name, config, settings)
        figures += generation
        notes += generation_notes
    figures.append(
        Figure(
            f"{label}.process.peak_rss",
            float(peak_rss_bytes()),
            "bytes",
            "getrusage max RSS of the whole process so far (it never decreases)",
        )
    )
    return figures, notes


def _settings_dict(settings: BenchSettings) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in vars(settings).items()
    }


def invalid_figures(report: dict[str, Any]) -> list[str]:
    """Return the names of figures that are not finite and positive or that lack a unit."""
    bad = []
    for figure in report["figures"]:
        value = figure["value"]
        if not (isinstance(value, float | int) and math.isfinite(value) and value > 0):
            bad.append(f"{figure['name']} = {value!r}")
        elif not figure.get("unit"):
            bad.append(f"{figure['name']} has no unit")
    return bad


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Return one line per ratio and per median time, for the CLI's final output."""
    lines = []
    for figure in report["figures"]:
        name, unit = figure["name"], figure["unit"]
        if unit == "ratio" or name.endswith(".median") or unit == "FLOP/s":
            lines.append(f"{name:<70} {figure['value']:>12.4g} {unit}")
    lines += [f"note: {note}" for note in report["notes"]]
    return lines
