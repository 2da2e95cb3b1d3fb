"""`gpt2-twins parity`: compare the twins with each other, or both with reference logits."""

from __future__ import annotations

import argparse

from bridge.parity import REFERENCE_TOLERANCE, compare_twins, compare_with_reference
from bridge.sources import load_model_source


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="check that both twins compute the same logits (exit 1 if not)",
        description="Run the Flax and Penzai twins in float32 with dropout off and print the "
        "largest absolute logit difference. Exits with status 1 above the tolerance.",
    )
    parser.add_argument("source", help="run directory or Hugging Face GPT-2 folder")
    parser.add_argument(
        "--reference",
        metavar="FILE.npz",
        help="compare each twin with the `logits` (or `logits_last`) stored with `input_ids` "
        "(and optional `attention_mask`) in this file",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="absolute bound on the logit difference (default: 1e-5 x max(1, largest "
        f"|logit|) between the twins, {REFERENCE_TOLERANCE:g} against --reference)",
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="number of sequences compared (default: 4)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random ids used without validation text"
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ValueError(f"--tolerance must be >= 0, got {args.tolerance}.")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}.")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    source = load_model_source(args.source)
    if args.reference:
        tolerance = REFERENCE_TOLERANCE if args.tolerance is None else args.tolerance
        result = compare_with_reference(source, args.reference, tolerance)
        print(
            f"reference: {result.reference} ({result.logits_key}, "
            f"{result.compared_positions} positions with mask == 1)"
        )
        for twin, diff in result.max_abs_diff.items():
            print(f"{twin} vs reference: max |logit diff| = {diff:.3g}")
    else:
        result = compare_twins(source, args.tolerance, num_windows=args.batch, seed=args.seed)
        print(f"input: {result.input_description}")
        print(f"max |logit| = {result.max_abs_logit:.4g}")
        print(f"flax vs penzai: max |logit diff| = {result.max_abs_diff:.3g}")
        print(f"argmax mismatches (top-2 gap > tolerance): {result.argmax_mismatches}")
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{verdict} (tolerance {result.tolerance:.3g})")
    return 0 if result.passed else 1
