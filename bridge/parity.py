"""Parity checks: the two twins against each other, and each against reference logits.

Both twins run in float32 with dropout off on the same ids. Between the twins the
tolerance is 1e-5 x max(1, largest absolute logit), the bound their computations meet
when only XLA's summation order differs. Against a foreign reference (for example
Hugging Face logits saved in an `.npz`) the default is an absolute 1e-4.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from bridge.convert import flax_to_penzai
from bridge.sources import ModelSource
from flax_gpt2.model import GPT2
from gpt2_spec import check_length, check_token_ids
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import forward

logger = logging.getLogger(__name__)

TWIN_RELATIVE_TOLERANCE = 1e-5
REFERENCE_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class TwinParity:
    """Flax twin against Penzai twin on one batch.

    Attributes:
      input_description: Where the ids came from.
      batch_shape: (batch, seq) of the ids.
      max_abs_diff: Largest |flax - penzai| over all logits.
      max_abs_logit: Largest |logit| of the Flax twin.
      tolerance: The bound `max_abs_diff` must not exceed.
      argmax_mismatches: Positions whose argmax differs although the Flax twin's top two
        logits are more than `tolerance` apart (closer ones may flip legitimately).
    """

    input_description: str
    batch_shape: tuple[int, int]
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    argmax_mismatches: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_mismatches == 0


@dataclasses.dataclass(frozen=True)
class ReferenceParity:
    """Each twin against stored reference logits.

    Attributes:
      reference: The `.npz` file.
      logits_key: `logits` or `logits_last`, the array compared.
      compared_positions: Number of (batch, position) pairs compared (mask == 1).
      max_abs_diff: Twin name (`flax`, `penzai`) -> largest |twin - reference|.
      tolerance: The bound each difference must not exceed.
    """

    reference: Path
    logits_key: str
    compared_positions: int
    max_abs_diff: dict[str, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(diff <= self.tolerance for diff in self.max_abs_diff.values())


def twin_logits(
    source: ModelSource, tokens: np.ndarray, positions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 logits (flax, penzai) [batch, seq, vocabulary] with dropout off.

    Raises:
      ValueError: if an id is outside the vocabulary or the sequence is too long.
    """
    config = source.config
    tokens = check_token_ids(tokens, config.vocab_size)
    check_length(tokens.shape[1], config, what="input")
    if positions is None:
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    positions = jnp.asarray(positions, dtype=jnp.int32)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float32), source.params)

    flax_apply = jax.jit(lambda p, t, q: GPT2(config).apply({"params": p}, t, q))
    flax_out = np.asarray(flax_apply(params, tokens, positions))
    penzai_model = remove_dropout(flax_to_penzai(params, config))
    penzai_out = np.asarray(pz.variable_jit(forward)(penzai_model, tokens, positions))
    return flax_out, penzai_out


def parity_inputs(
    source: ModelSource, num_windows: int = 4, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Return ids [batch, seq] to compare on, and a sentence saying where they came from.

    Windows of the run's validation ids when it has them (evenly spaced, context length
    long), else a seeded uniform random batch.
    """
    config = source.config
    ids = source.validation_ids
    if ids is not None and np.asarray(ids).size >= 2:
        ids = np.asarray(ids).reshape(-1)
        length = min(config.context_length, ids.size)
        starts = np.linspace(0, ids.size - length, num_windows).astype(int)
        batch = np.stack([ids[s : s + length] for s in starts])
        return batch, f"{len(starts)} windows of {length} validation tokens"
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, config.vocab_size, (num_windows, config.context_length))
    return batch.astype(np.int32), (
        f"a random batch of {num_windows} x {config.context_length} token ids (seed {seed}; "
        "the source has no validation text)"
    )


def _argmax_mismatches(reference: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    top2 = np.sort(reference, axis=-1)[..., -2:]
    decisive = (top2[..., 1] - top2[..., 0]) > tolerance
    return int(((reference.argmax(-1) != other.argmax(-1)) & decisive).sum())


def compare_twins(
    source: ModelSource,
    tolerance: float | None = None,
    num_windows: int = 4,
    seed: int = 0,
) -> TwinParity:
    """Run both twins on the same ids and compare their logits and argmax.

    Args:
      source: The model.
      tolerance: Absolute bound on the logit difference; None means
        1e-5 x max(1, largest absolute logit).
      num_windows: Batch size of the comparison.
      seed: Seed of the random batch used when the source has no validation ids.
    """
    tokens, description = parity_inputs(source, num_windows, seed)
    flax_out, penzai_out = twin_logits(source, tokens)
    max_logit = float(np.abs(flax_out).max())
    if tolerance is None:
        tolerance = TWIN_RELATIVE_TOLERANCE * max(1.0, max_logit)
    result = TwinParity(
        input_description=description,
        batch_shape=tuple(tokens.shape),
        max_abs_diff=float(np.abs(flax_out - penzai_out).max()),
        max_abs_logit=max_logit,
        tolerance=tolerance,
        argmax_mismatches=_argmax_mismatches(flax_out, penzai_out, tolerance),
    )
    logger.info("Twin parity: %s", result)
    return result


def _read_reference(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"Reference file {path} not found.")
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    if "input_ids" not in arrays:
        raise ValueError(f"{path} has no 'input_ids' array; it contains {sorted(arrays)}.")
    if "logits" not in arrays and "logits_last" not in arrays:
        raise ValueError(
            f"{path} has neither 'logits' [batch, seq, vocabulary] nor 'logits_last' "
            f"[batch, vocabulary]; it contains {sorted(arrays)}."
        )
    return arrays


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Return positions max(cumsum(mask) - 1, 0) for real tokens and -1 for padding."""
    mask = np.asarray(mask).astype(bool)
    return np.where(mask, np.cumsum(mask, axis=-1) - 1, -1).astype(np.int32)


def _reference_arrays(arrays: dict[str, np.ndarray], path: Path):
    tokens = np.asarray(arrays["input_ids"])
    if tokens.ndim != 2:
        raise ValueError(f"{path}: input_ids must be [batch, seq], got shape {tokens.shape}.")
    mask = np.asarray(arrays.get("attention_mask", np.ones_like(tokens)))
    if mask.shape != tokens.shape:
        raise ValueError(
            f"{path}: attention_mask has shape {mask.shape}, input_ids {tokens.shape}."
        )
    key = "logits" if "logits" in arrays else "logits_last"
    return tokens, mask.astype(bool), key, np.asarray(arrays[key], dtype=np.float32)


def compare_with_reference(
    source: ModelSource, reference: str | Path, tolerance: float = REFERENCE_TOLERANCE
) -> ReferenceParity:
    """Compare both twins with the logits stored in an `.npz` file.

    The file contains `input_ids` [batch, seq], and `logits` [batch, seq, vocabulary] or
    `logits_last` [batch, vocabulary]. An optional `attention_mask` marks real tokens
    with 1. Positions then count real tokens only, and padding gets position -1, so it
    is never attended to. Only positions with mask == 1 are compared.

    Raises:
      FileNotFoundError: if the file is missing.
      ValueError: if it lacks an array or the shapes disagree.
    """
    path = Path(reference)
    tokens, mask, key, expected = _reference_arrays(_read_reference(path), path)
    flax_out, penzai_out = twin_logits(source, tokens, positions_from_mask(mask))
    outputs = {"flax": flax_out, "penzai": penzai_out}
    if key == "logits_last":
        outputs = {name: logits[:, -1] for name, logits in outputs.items()}
        mask = mask[:, -1]
    shape = next(iter(outputs.values())).shape
    if expected.shape != shape:
        raise ValueError(f"{path}: {key} has shape {expected.shape}; the twins give {shape}.")
    diffs = {
        name: float(np.abs(logits - expected)[mask].max(initial=0.0))
        for name, logits in outputs.items()
    }
    result = ReferenceParity(path, key, int(mask.sum()), diffs, tolerance)
    logger.info("Reference parity: %s", result)
    return result
