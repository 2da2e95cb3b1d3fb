"""`gpt2-twins generate`: continue prompts with either twin, streaming text as it is sampled."""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from bridge.decode_steps import make_twin
from bridge.generate import (
    GenerationResult,
    GenerationSettings,
    check_eos_id,
    check_prompts,
    generate,
)
from bridge.sources import ModelSource, load_model_source

logger = logging.getLogger(__name__)


def _parse_ids(text: str) -> np.ndarray:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid token ids {text!r}; expected comma-separated integers such as 3,14,15"
        ) from None
    return np.asarray(ids, dtype=np.int64)


class _AppendPrompt(argparse.Action):
    """Collects --prompt and --prompt-ids into one list, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind = "ids" if option_string == "--prompt-ids" else "text"
        prompts = list(getattr(namespace, self.dest) or [])
        prompts.append((kind, values))
        setattr(namespace, self.dest, prompts)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="continue prompts with the Flax or the Penzai twin",
        description="Generate a continuation of each prompt. A single text prompt is "
        "printed as it is generated; a batch is printed when every row has finished.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a run directory written by `gpt2-twins train` or a Hugging Face GPT-2 folder",
    )

    prompt_options = dict(action=_AppendPrompt, dest="prompts", default=[])
    parser.add_argument(
        "--prompt", metavar="TEXT", help="prompt text; repeat for a batch", **prompt_options
    )
    parser.add_argument(
        "--prompt-ids",
        metavar="IDS",
        type=_parse_ids,
        help="prompt as comma-separated token ids, e.g. 3,14,15; repeat for a batch",
        **prompt_options,
    )

    parser.add_argument(
        "--twin",
        choices=("flax", "penzai"),
        default="flax",
        help="which twin computes the logits (default: flax)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="maximum number of tokens added to each prompt (default: the room left in the "
        "context after the longest prompt)",
    )

    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="softmax temperature; 0 is greedy decoding (default: 1.0)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="sample only among the K most likely tokens (default: off)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample only within the smallest set of most likely tokens whose probability "
        "reaches P, in (0, 1] (default: off)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the sampling key (default: 0)"
    )

    parser.add_argument(
        "--eos-id",
        type=int,
        default=None,
        metavar="ID",
        help="stop a row after this token id (default: the model's end-of-sequence id, if any)",
    )
    parser.add_argument(
        "--sliding-window",
        action="store_true",
        help="allow prompt + new tokens past the context length by predicting each later "
        "token from the last context-length tokens",
    )
    parser.add_argument(
        "--format",
        choices=("text", "ids"),
        default=None,
        help="print text or token ids (default: text when the model has a tokenizer, else ids)",
    )
    return parser


def _prompt_ids(prompts: list[tuple[str, object]], source: ModelSource) -> list[np.ndarray]:
    if not prompts:
        raise ValueError("No prompt given; pass --prompt TEXT or --prompt-ids 3,14,15.")
    ids = []
    for kind, value in prompts:
        if kind == "ids":
            ids.append(value)
        elif source.tokenizer is None:
            raise ValueError(
                f"The model at {source.path} has no tokenizer, so --prompt cannot be "
                "encoded; pass token ids with --prompt-ids instead."
            )
        else:
            ids.append(source.tokenizer.encode(value))
    return ids


def _stream_text(source: ModelSource, prompt: np.ndarray):
    """Print the prompt, then return a token callback that prints each new piece of text."""
    tokenizer = source.tokenizer
    print(tokenizer.decode(prompt), end="", flush=True)
    new_ids: list[int] = []
    printed = [0]

    def on_tokens(index: int, tokens: np.ndarray, active: np.ndarray) -> None:
        if not active[0]:
            return
        new_ids.append(int(tokens[0]))
        # Decoding everything so far keeps multi-token characters of a BPE tokenizer whole.
        text = tokenizer.decode(new_ids)
        print(text[printed[0] :], end="", flush=True)
        printed[0] = len(text)

    return on_tokens


def _print_results(
    result: GenerationResult, prompts: list[np.ndarray], source: ModelSource, output: str
) -> None:
    for row, new_ids in enumerate(result.sequences):
        if output == "ids":
            print(",".join(str(int(token)) for token in new_ids))
            continue
        if row:
            print()
        print(source.tokenizer.decode(prompts[row]) + source.tokenizer.decode(new_ids))


def run(args: argparse.Namespace) -> int:
    source = load_model_source(args.source)
    output = args.format or ("text" if source.tokenizer is not None else "ids")
    if output == "text" and source.tokenizer is None:
        raise ValueError(
            f"The model at {source.path} has no tokenizer, so it cannot print text; "
            "use --format ids."
        )

    prompts = _prompt_ids(args.prompts, source)
    context = source.config.context_length
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max(1, context - max(len(prompt) for prompt in prompts))
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        sliding_window=args.sliding_window,
    )
    prompts = check_prompts(prompts, source.config, settings)

    if args.sliding_window and max(map(len, prompts)) + max_new_tokens > context:
        print(
            f"Sliding window: tokens past the context length of {context} are predicted "
            f"from the last {context} tokens.",
            file=sys.stderr,
        )

    eos_id = source.eos_id if args.eos_id is None else args.eos_id
    check_eos_id(eos_id, source.config)
    stream = output == "text" and len(prompts) == 1
    on_tokens = _stream_text(source, prompts[0]) if stream else None

    model = make_twin(args.twin, source.params, source.config)
    result = generate(model, prompts, settings, eos_id=eos_id, on_tokens=on_tokens)
    if stream:
        print()
    else:
        _print_results(result, prompts, source, output)
    return 0
