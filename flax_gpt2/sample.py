"""A small fixed-window sampler for the end-of-training text sample.

It recomputes the whole window for every token (no KV cache), so it is only meant for a
few hundred characters. The loop runs inside one `jax.jit` call: the window is always
`context_length` long, so nothing retraces per token.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config, check_length, check_token_ids


def sample_tokens(
    config: GPT2Config,
    params: Any,
    prompt_ids: np.ndarray,
    num_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 0,
) -> np.ndarray:
    """Sample `num_tokens` ids after `prompt_ids` with temperature and top-k.

    Once the window is full, its oldest token is dropped, as in nanoGPT's `generate`.

    Args:
      config: The model architecture.
      params: Flax params for `config`.
      prompt_ids: 1-D token ids, at most `context_length` of them.
      num_tokens: How many ids to sample.
      temperature: Divides the logits; must be positive.
      top_k: Keep only the k most likely tokens; None keeps all.
      seed: Seed of the sampling RNG.

    Returns:
      int32 array [num_tokens] of the sampled ids (the prompt excluded).
    """
    prompt = check_token_ids(np.asarray(prompt_ids).reshape(-1), config.vocab_size)
    check_length(len(prompt), config)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}.")
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}.")
    k = config.vocab_size if top_k is None else min(int(top_k), config.vocab_size)
    if k <= 0:
        raise ValueError(f"top_k must be positive or None, got {top_k!r}.")
    window = np.zeros((1, config.context_length), np.int32)
    window[0, : len(prompt)] = prompt
    out = _sample_loop(
        config,
        num_tokens,
        k,
        params,
        jnp.asarray(window),
        len(prompt),
        jnp.float32(temperature),
        jax.random.key(seed),
    )
    return np.asarray(out)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample_loop(config, num_tokens, top_k, params, window, length, temperature, key):
    model = GPT2(config)
    context = config.context_length

    def step(index, carry):
        window, length, key, out = carry
        key, draw_key = jax.random.split(key)
        # Padding after `length` cannot reach earlier positions through causal attention.
        logits = model.apply({"params": params}, window)[0, length - 1] / temperature
        threshold = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
        token = jax.random.categorical(draw_key, logits).astype(jnp.int32)
        shifted = jnp.concatenate([window[:, 1:], token[None, None]], axis=1)
        appended = window.at[0, jnp.minimum(length, context - 1)].set(token)
        window = jnp.where(length < context, appended, shifted)
        return window, jnp.minimum(length + 1, context), key, out.at[index].set(token)

    out = jnp.zeros((num_tokens,), jnp.int32)
    carry = (window, jnp.asarray(length, jnp.int32), key, out)
    return jax.lax.fori_loop(0, num_tokens, step, carry)[3]
