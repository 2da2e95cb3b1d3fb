"""`gpt2-twins export-hf`: write a run directory or HF folder as a Hugging Face GPT-2 folder."""

from __future__ import annotations

import argparse

from bridge.hf import export_source
from bridge.sources import load_model_source


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="export a model as a Hugging Face GPT-2 folder",
        description="Write config.json, model.safetensors and the tokenizer (tokenizer.json "
        "for BPE, char_tokenizer.json for a character tokenizer) so that "
        "transformers.GPT2LMHeadModel.from_pretrained opens the folder. p-RoPE models have "
        "no Hugging Face GPT-2 equivalent and are rejected.",
    )
    parser.add_argument("source", help="run directory or Hugging Face GPT-2 folder")
    parser.add_argument("--out", required=True, help="new or empty folder to write")
    return parser


def run(args: argparse.Namespace) -> int:
    out = export_source(load_model_source(args.source), args.out)
    print(f"wrote {out}")
    return 0
