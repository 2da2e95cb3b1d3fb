"""Rules that turn next-token logits into token ids: greedy, temperature, top-k and top-p.

Every function here is pure JAX and takes its settings as arrays, so one compiled
generation loop serves every temperature, top-k and top-p value. Randomness comes only
from the key the caller passes, which is what makes both twins draw the same tokens
from the same seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def filter_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
    """Set logits outside the top-k tokens and outside the top-p nucleus to -inf.

    Top-k is applied first, then top-p on the probabilities that remain, as Hugging
    Face's `generate` does. The largest logit always survives. Tokens tied with the
    smallest kept logit are kept too, so a filter may keep more than k tokens.

    Args:
      logits: float logits [batch, vocabulary], already divided by the temperature.
      top_k: int scalar; 0 keeps every token.
      top_p: float scalar in (0, 1]; 1 keeps every token.

    Returns:
      The logits [batch, vocabulary] with filtered-out entries set to -inf.
    """
    vocab_size = logits.shape[-1]
    descending = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_size), vocab_size)
    in_top_k = jnp.arange(vocab_size) < k
    descending = jnp.where(in_top_k, descending, -jnp.inf)

    # A sorted token stays in the nucleus if the probability mass before it is below
    # top_p. The first token has mass 0 before it, so it always stays.
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.sum(in_top_k & (mass_before < top_p), axis=-1, keepdims=True)
    num_kept = jnp.maximum(num_kept, 1)
    threshold = jnp.take_along_axis(descending, num_kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_tokens(
    logits: Array, key: Array, temperature: Array, top_k: Array, top_p: Array
) -> Array:
    """Choose one token per row: argmax when temperature is 0, else a filtered draw.

    Args:
      logits: float logits [batch, vocabulary] for the next token.
      key: PRNG key for this step; the same key and logits give the same tokens.
      temperature: float scalar >= 0; 0 means greedy.
      top_k: int scalar; 0 turns top-k off.
      top_p: float scalar in (0, 1]; 1 turns top-p off.

    Returns:
      int32 token ids [batch].
    """
    logits = logits.astype(jnp.float32)

    # Branch with lax.cond, not jnp.where: at run time only the chosen branch executes, so
    # greedy decoding skips the sort over the vocabulary that the filters need.
    def choose_greedy() -> Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw() -> Array:
        # Under vmap both branches run, so keep the unused one finite.
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
        filtering = (top_k > 0) | (top_p < 1)
        scaled = jax.lax.cond(
            filtering, lambda x: filter_logits(x, top_k, top_p), lambda x: x, scaled
        )
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, choose_greedy)
