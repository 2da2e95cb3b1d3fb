"""`gpt2-twins import-hf`: turn a Hugging Face GPT-2 folder into a run directory."""

from __future__ import annotations

import argparse

from bridge.hf_run import import_to_run


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="import a Hugging Face GPT-2 folder as a run directory",
        description="Read config.json, model.safetensors and char_tokenizer.json from a local "
        "folder and write a run directory (checkpoint step 0, fresh optimizer state) that "
        "the other commands load. Run directories store only character tokenizers, so folders "
        "with a BPE tokenizer.json or no tokenizer are rejected; pass such a folder to the "
        "other commands directly.",
    )
    parser.add_argument("hf_dir", help="Hugging Face GPT-2 folder")
    parser.add_argument("--out", required=True, help="run directory to write")
    return parser


def run(args: argparse.Namespace) -> int:
    out = import_to_run(args.hf_dir, args.out)
    print(f"wrote {out}")
    return 0
