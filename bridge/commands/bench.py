"""`gpt2-twins bench`: time both twins (and a PyTorch reference) and report per-layer parity."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from benchmarks.settings import PARTS, BenchSettings

# The tiny HF fixture beside the checkout, as the tests find it; GPT2_TWINS_FIXTURE overrides.
DEFAULT_FIXTURE = Path(__file__).resolve().parents[2].parent / "shared/fixtures/hf_gpt2_tiny"


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="benchmark both twins: forward, train step, generation, parity",
        description="Time the Flax and Penzai twins on the same random weights and inputs "
        "(forward pass, AdamW train step, KV-cached against recomputed generation), a "
        "PyTorch reference of the same shape when torch is installed, and the per-layer "
        "parity of both twins with a Hugging Face fixture in float32 and bfloat16.",
    )

    # What to measure.
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and 2 repeats, for a smoke test (default preset: shakespeare-char)",
    )
    parser.add_argument(
        "--preset",
        action="append",
        metavar="NAME",
        help="preset to measure; repeat for several (default: shakespeare-char and "
        "shakespeare-char-large)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--no-parity", action="store_true", help="skip the per-layer parity report")

    # Where the results go.
    parser.add_argument("--json", metavar="FILE", help="write every figure with its unit here")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots of the ratios here")

    # How long and on what.
    parser.add_argument("--repeats", type=int, help="measured repeats per timing (default: 5)")
    parser.add_argument(
        "--generation-batches",
        metavar="N,N",
        help="comma-separated batch sizes for generation (default: 1,12; quick: 2)",
    )
    parser.add_argument(
        "--recompute-steps",
        type=int,
        help="tokens the full-recomputation baseline generates per timing; each costs one "
        "full-window forward pass (default: 32; quick: 4)",
    )
    parser.add_argument(
        "--fixture",
        metavar="DIR",
        help="tiny HF GPT-2 folder with forward.npz for the parity report "
        "(default: $GPT2_TWINS_FIXTURE or ../shared/fixtures/hf_gpt2_tiny)",
    )
    return parser


def _settings(args: argparse.Namespace) -> BenchSettings:
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    if args.no_torch or importlib.util.find_spec("torch") is None:
        parts = tuple(part for part in parts if part != "torch")
    presets = tuple(args.preset) if args.preset else None
    settings = BenchSettings.quick_run(presets or ("shakespeare-char",)) if args.quick else None
    if settings is None:
        settings = BenchSettings(presets=presets) if presets else BenchSettings()
    changes: dict[str, object] = {"parts": parts}
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.recompute_steps is not None:
        changes["recompute_steps"] = args.recompute_steps
    if args.generation_batches:
        changes["generation_batches"] = _int_list(args.generation_batches, "--generation-batches")
    return BenchSettings(**{**vars(settings), **changes})


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise ValueError(
            f"{option} must be comma-separated integers such as 1,12, got {text!r}."
        ) from None


def _fixture(args: argparse.Namespace) -> Path | None:
    if args.no_parity:
        return None
    if args.fixture:
        path = Path(args.fixture)
        if not (path / "forward.npz").is_file():
            raise FileNotFoundError(
                f"--fixture {path} has no forward.npz; pass the tiny HF GPT-2 fixture folder."
            )
        return path
    path = Path(os.environ.get("GPT2_TWINS_FIXTURE", DEFAULT_FIXTURE))
    return path if (path / "forward.npz").is_file() else None


def run(args: argparse.Namespace) -> int:
    from benchmarks.run import run_benchmarks, summary_lines, write_json

    report = run_benchmarks(_settings(args), _fixture(args))
    for line in summary_lines(report):
        print(line)
    if report["parity"]:
        from benchmarks.parity_report import format_rows

        print(format_rows(report["parity"]))
    if args.json:
        write_json(report, Path(args.json))
        print(f"wrote {args.json}")
    if args.plots:
        from benchmarks.plots import write_plots

        for path in write_plots(report, args.plots):
            print(f"wrote {path}")
    return 0
