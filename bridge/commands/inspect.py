"""`gpt2-twins inspect`: cache a prompt's activations in the Penzai twin and write views."""

from __future__ import annotations

import argparse

from bridge.inspect import InspectResult, inspect


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", ",").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid token ids {text!r}; expected comma-separated integers such as 3,14,15"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("empty token ids; give at least one id such as 3")
    return ids


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="cache activations of a prompt in the Penzai twin and write HTML views",
        description="Run the Penzai twin on a prompt, print its next-token predictions, and "
        "optionally write the attention patterns as an HTML page, cached activations as "
        ".npz (TransformerLens hook names and axis order) and the model as a treescope page.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a run directory written by `gpt2-twins train` or a Hugging Face GPT-2 folder",
    )
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text")
    prompt.add_argument(
        "--prompt-ids",
        metavar="IDS",
        type=_parse_ids,
        action="append",
        help="prompt as comma-separated token ids; repeat for a batch of equal-length prompts",
    )
    parser.add_argument(
        "--out", metavar="FILE.html", help="write the attention page for every layer and head"
    )
    parser.add_argument(
        "--cache",
        metavar="NAME_OR_PATTERN",
        nargs="+",
        help="hook names or glob patterns to cache, e.g. "
        "'blocks.*.attn.hook_pattern' (default: all hooks with --save)",
    )
    parser.add_argument(
        "--save", metavar="FILE.npz", help="write the cached hooks as arrays keyed by hook name"
    )
    parser.add_argument(
        "--treescope",
        metavar="FILE.html",
        help="write the Penzai model's treescope view as a standalone page",
    )
    return parser


def _format_predictions(result: InspectResult, row: int) -> str:
    if result.has_tokenizer:
        return ", ".join(f"{label!r} {p:.3f}" for _, label, p in result.predictions[row])
    return ", ".join(f"{token} {p:.3f}" for token, _, p in result.predictions[row])


def run(args: argparse.Namespace) -> int:
    result = inspect(
        args.source,
        prompt=args.prompt,
        prompt_ids=args.prompt_ids,
        cache=args.cache,
        out=args.out,
        save=args.save,
        treescope=args.treescope,
    )
    for row, labels in enumerate(result.labels):
        ids = result.tokens[row].tolist()
        text = f" {''.join(labels)!r}" if result.has_tokenizer else ""
        print(f"prompt {row}:{text} ({len(labels)} tokens) ids {ids}")
        print(f"  next token (probability): {_format_predictions(result, row)}")
    for name, array in result.arrays.items():
        print(f"cached {name} {list(array.shape)}")
    for kind, path in result.written.items():
        print(f"wrote {kind}: {path}")
    return 0
