"""`gpt2-twins train`: train the Flax twin on a text file and save a run directory."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from flax_gpt2.sharding import parse_mesh_spec
from flax_gpt2.train import train
from gpt2_spec import PRESETS

# Command-line option -> TrainSettings field, for the options that map one to one.
_SETTING_OPTIONS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "min_lr": "min_learning_rate",
    "warmup_steps": "warmup_steps",
    "lr_decay_steps": "lr_decay_steps",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "eval_interval": "eval_interval",
    "eval_batches": "eval_batches",
    "log_interval": "log_interval",
    "checkpoint_interval": "checkpoint_interval",
    "seed": "seed",
    "peak_flops": "peak_flops",
    "sample_chars": "sample_chars",
}


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="train the Flax twin on a text file",
        description="Train the Flax twin on a character-level text file. Options left unset "
        "take nanoGPT's Shakespeare CPU recipe, or on --resume the run's saved settings.",
    )
    parser.add_argument("--data", required=True, help="UTF-8 text file to train on")
    parser.add_argument("--out", required=True, help="run directory for checkpoints and metrics")
    parser.add_argument(
        "--preset",
        help=f"model preset, one of {', '.join(PRESETS)} (default: shakespeare-char)",
    )

    parser.add_argument("--dropout", type=float, help="dropout rate everywhere (default: preset)")

    parser.add_argument("--steps", type=int, help="total optimizer steps (default: 2000)")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: 12)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--min-lr", type=float, help="final learning rate (default: 1e-4)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (default: 100)")
    parser.add_argument(
        "--lr-decay-steps", type=int, help="step where the cosine decay ends (default: --steps)"
    )
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.1)")
    parser.add_argument(
        "--grad-clip", type=float, help="max global gradient norm, 0 for none (default: 1.0)"
    )

    parser.add_argument(
        "--eval-interval", type=int, help="steps between loss estimates (default: 250)"
    )
    parser.add_argument("--eval-batches", type=int, help="batches per loss estimate (default: 50)")
    parser.add_argument("--log-interval", type=int, help="steps between log lines (default: 50)")
    parser.add_argument(
        "--checkpoint-interval", type=int, help="steps between checkpoints (default: 500)"
    )
    parser.add_argument("--seed", type=int, help="seed of init, data and dropout (default: 1337)")

    parser.add_argument(
        "--mesh",
        help="device mesh sizes, e.g. data=2,model=4 (default: data = all devices)",
    )
    parser.add_argument("--peak-flops", type=float, help="FLOP/s for MFU (default: measured)")
    parser.add_argument(
        "--sample-chars", type=int, help="characters to sample at the end (default: 300)"
    )

    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    return parser


def run(args: argparse.Namespace) -> int:
    # orbax logs every checkpoint step through absl at INFO, dozens of lines per save.
    logging.getLogger("absl").setLevel(logging.WARNING)
    changes = {
        field: getattr(args, option)
        for option, field in _SETTING_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if args.mesh is not None:
        changes["mesh"] = parse_mesh_spec(args.mesh)
    if args.resume and (args.preset is not None or args.dropout is not None):
        raise ValueError(
            "--preset and --dropout cannot change a resumed run, whose model comes from "
            f"{args.out}/config.json; drop them or start a new run with --out."
        )
    model_overrides = {}
    if args.dropout is not None:
        for name in ("embedding_dropout", "attention_dropout", "residual_dropout"):
            model_overrides[name] = args.dropout
    result = train(
        args.data,
        args.out,
        changes,
        preset_name=args.preset or "shakespeare-char",
        model_overrides=model_overrides,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(
        f"Trained to step {result.step} in {result.seconds:.1f} s: train loss "
        f"{result.train_loss:.4f}, validation loss {result.val_loss:.4f}. Run saved in {args.out}."
    )
    return 0
