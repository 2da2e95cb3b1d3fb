"""Inspect a model on a prompt: cache activations, save them, and write HTML views.

This is the library function behind `gpt2-twins inspect`. The model is loaded with
`bridge.sources.load_model_source`, converted to the Penzai twin, and run once with the
requested hooks cached.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge.convert import flax_to_penzai
from bridge.sources import ModelSource, load_model_source
from gpt2_spec import check_length, check_token_ids
from penzai_gpt2.cache import ActivationCache, resolve_names, run_with_cache
from penzai_gpt2.views import save_attention_page, save_treescope

logger = logging.getLogger(__name__)

PATTERN_HOOKS = "blocks.*.attn.hook_pattern"
TOP_PREDICTIONS = 5


@dataclasses.dataclass(frozen=True)
class InspectResult:
    """Arrays, labels and files from one inspection.

    Attributes:
      tokens: int32 token ids [batch, seq] that were run.
      labels: The text of every token, per batch row (ids as text without a tokenizer).
      cache: The activations that were cached, and the logits.
      arrays: The requested hooks as plain arrays in TransformerLens axis order.
      written: Kind of output (`attention`, `arrays`, `treescope`) -> file written.
      has_tokenizer: Whether `labels` are decoded text rather than ids.
      predictions: Per batch row, the most likely next tokens after the last position as
        (id, label, probability), most likely first.
    """

    tokens: np.ndarray
    labels: list[list[str]]
    cache: ActivationCache
    arrays: dict[str, np.ndarray]
    written: dict[str, Path]
    has_tokenizer: bool
    predictions: list[list[tuple[int, str, float]]]


def encode_prompts(
    source: ModelSource,
    prompt: str | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Return validated token ids [batch, seq] from a text prompt or lists of ids.

    Raises:
      ValueError: if both or neither input is given, or if the source has no tokenizer
        for a text prompt. Also for a character outside the vocabulary, an id out of
        range, rows of different lengths, and a row that is empty or too long.
    """
    if (prompt is None) == (not prompt_ids):
        raise ValueError("Give either a text prompt or token ids, not both and not neither.")
    if prompt is not None:
        if source.tokenizer is None:
            raise ValueError(
                f"{source.path} has no tokenizer, so a text prompt cannot be encoded; "
                "pass token ids with --prompt-ids instead."
            )
        rows = [np.asarray(source.tokenizer.encode(prompt))]
    else:
        rows = [np.asarray(list(ids)) for ids in prompt_ids]
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"The prompts have different lengths {[len(row) for row in rows]}; a batch needs "
            "equal lengths, so inspect them one at a time or trim them to one length."
        )
    for row in rows:
        check_length(len(row), source.config)
    return check_token_ids(np.stack(rows).astype(np.int64), source.config.vocab_size)


def token_labels(source: ModelSource, tokens: np.ndarray) -> list[list[str]]:
    """Return the text of each token, or its id when the source has no tokenizer."""
    if source.tokenizer is None:
        return [[str(int(token)) for token in row] for row in tokens]
    return [[source.tokenizer.decode([int(token)]) for token in row] for row in tokens]


def top_predictions(
    source: ModelSource, logits: np.ndarray, count: int = TOP_PREDICTIONS
) -> list[list[tuple[int, str, float]]]:
    """Return the `count` most likely next tokens of each row's last position."""
    last = np.asarray(logits, dtype=np.float64)[:, -1]
    probabilities = np.exp(last - last.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    best = np.argsort(-probabilities, axis=-1)[:, :count]
    labels = token_labels(source, best)
    return [
        [(int(t), label, float(p[t])) for t, label in zip(row, row_labels, strict=True)]
        for row, row_labels, p in zip(best, labels, probabilities, strict=True)
    ]


def _check_output_path(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot write {option} {path}: the folder {path.parent} does not exist; create it "
            "first."
        )


def inspect_source(
    source: ModelSource,
    tokens: np.ndarray,
    cache: Sequence[str] | None = None,
    out: str | Path | None = None,
    save: str | Path | None = None,
    treescope: str | Path | None = None,
) -> InspectResult:
    """Run the Penzai twin of `source` on `tokens` and write the requested outputs.

    Args:
      source: A loaded model.
      tokens: Validated int ids [batch, seq] (see `encode_prompts`).
      cache: Hook names or glob patterns to cache; `None` caches every hook when `save`
        is given and none otherwise.
      out: Where to write the attention page (every layer and head).
      save: Where to write the cached hooks as an `.npz` of TransformerLens-ordered arrays,
        plus `input_ids` and `logits`.
      treescope: Where to write the model's treescope page.

    Raises:
      ValueError: if a hook name or pattern matches nothing.
      FileNotFoundError: if an output's folder does not exist.
    """
    out, save, treescope = (Path(p) if p is not None else None for p in (out, save, treescope))
    for path, option in ((out, "--out"), (save, "--save"), (treescope, "--treescope")):
        _check_output_path(path, option)
    model = flax_to_penzai(source.params, source.config)
    requested = resolve_names(model, cache) if cache else []
    if save is not None and not cache:
        requested = resolve_names(model, None)
    needed = set(requested) | (set(resolve_names(model, PATTERN_HOOKS)) if out else set())
    logger.info("Running %s on %s tokens, caching %d hooks", source.path, tokens.shape, len(needed))
    activations = run_with_cache(model, tokens, lambda name: name in needed)
    arrays = activations.to_transformerlens()
    labels = token_labels(source, tokens)
    written: dict[str, Path] = {}
    if out is not None:
        patterns = np.stack([arrays[name] for name in resolve_names(model, PATTERN_HOOKS)], 1)
        title = f"Attention patterns of {source.path.name}"
        written["attention"] = save_attention_page(out, patterns, labels, title)
    selected = {name: arrays[name] for name in requested}
    if save is not None:
        extra = {"input_ids": tokens.astype(np.int32), "logits": np.asarray(activations.logits)}
        with save.open("wb") as file:
            np.savez(file, **selected, **extra)
        written["arrays"] = save
    if treescope is not None:
        written["treescope"] = save_treescope(treescope, model, f"{source.path.name} (Penzai)")
    for kind, path in written.items():
        logger.info("Wrote %s to %s", kind, path)
    has_tokenizer = source.tokenizer is not None
    predictions = top_predictions(source, activations.logits)
    return InspectResult(tokens, labels, activations, selected, written, has_tokenizer, predictions)


def inspect(
    source_path: str | Path,
    prompt: str | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    **outputs,
) -> InspectResult:
    """Load `source_path`, encode the prompt, and call `inspect_source` with `outputs`."""
    source = load_model_source(source_path)
    tokens = encode_prompts(source, prompt, prompt_ids)
    return inspect_source(source, tokens, **outputs)
