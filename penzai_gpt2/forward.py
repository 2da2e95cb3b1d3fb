"""Run the Penzai twin on plain arrays: token ids in, logits out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from gpt2_spec import axes as ax
from penzai_gpt2.model import POSITIONS_INPUT, RANDOM_STREAM_INPUT


def named_tokens(tokens: jax.Array | np.ndarray) -> pz.nx.NamedArray:
    """Wrap int ids [batch, seq] as a named array {batch, seq}."""
    return pz.nx.wrap(jnp.asarray(tokens, dtype=jnp.int32)).tag(ax.BATCH, ax.SEQ)


def forward(
    model: pz.nn.Layer,
    tokens: jax.Array | np.ndarray,
    positions: jax.Array | np.ndarray | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Return logits [batch, seq, vocabulary] for token ids [batch, seq].

    Args:
      model: The Penzai twin (a `TransformerLM`), with dropout disabled or removed
        unless `dropout_key` is given.
      tokens: int token ids [batch, seq], already validated against the vocabulary.
      positions: Optional int positions [batch, seq]; -1 marks padding.
      dropout_key: PRNG key for active dropout layers.
    """
    named = named_tokens(tokens)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(named.named_shape[ax.SEQ]), jnp.shape(tokens))
    side_inputs = {POSITIONS_INPUT: named_tokens(positions)}
    if dropout_key is not None:
        side_inputs[RANDOM_STREAM_INPUT] = pz.RandomStream.from_base_key(dropout_key)
    logits = model(named, **side_inputs)
    return logits.unwrap(ax.BATCH, ax.SEQ, ax.VOCABULARY)
