"""Checks on token ids and lengths, made on the host before any JAX indexing.

JAX clamps out-of-range gather indices silently (and Flax's `nn.Embed` returns NaN for
them), so every entry point validates ids here first.
"""

from __future__ import annotations

import numpy as np

from gpt2_spec.config import GPT2Config


def check_token_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Return `ids` as an int32 array after checking every id is in [0, vocab_size).

    Raises:
      ValueError: naming the first offending id and its index.
    """
    array = np.asarray(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"Token ids must be integers, got dtype {array.dtype}.")
    bad = np.argwhere((array < 0) | (array >= vocab_size))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"Token id {int(array[index])} at index {index} is outside the model's vocabulary "
            f"[0, {vocab_size}); use ids below vocab_size={vocab_size}."
        )
    return array.astype(np.int32)


def check_length(length: int, config: GPT2Config, what: str = "prompt") -> None:
    """Raise if a sequence of `length` tokens does not fit the model's context."""
    if length > config.context_length:
        raise ValueError(
            f"The {what} has {length} tokens but the model's context length is "
            f"{config.context_length}; shorten it to at most {config.context_length} tokens."
        )
    if length <= 0:
        raise ValueError(f"The {what} is empty; give at least one token.")
