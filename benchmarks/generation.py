"""Greedy generation two ways: with a KV cache, and by full recomputation of the window.

Every loop is one jit'ed `lax.fori_loop`, compiled once, over a fixed window of
`prompt_len + new_tokens` positions:
- cached (Flax twin): one prefill call over the prompt, then one `decode=True` call per
  new token.
- cached (Penzai twin): the same, through Penzai's `KVCachingTransformerLM`.
- recomputed (either twin): every new token runs the whole window through the model
  again. Causal masking makes the not-yet-written slots harmless, so every step costs the
  same, and `steps` can be fewer than `new_tokens` to keep the slow baseline affordable.

These loops are the benchmark's own. `bridge.generate` (the project's sampling code)
is not timed here yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import sampling_mode

from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config
from gpt2_spec import axes as ax
from penzai_gpt2.forward import named_tokens


def _window_positions(batch: int, window: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(window, dtype=jnp.int32), (batch, window))


def cached_generate_fn(
    config: GPT2Config, batch: int, prompt_len: int, new_tokens: int
) -> Callable[[Any, jax.Array], jax.Array]:
    """Return a jit'ed `generate(params, prompt [batch, prompt_len]) -> ids [batch, window]`.

    Raises:
      ValueError: if the window does not fit in the model's context.
    """
    window = _check_window(config, prompt_len, new_tokens)
    model = GPT2(config, decode=True)
    slots = jnp.arange(window, dtype=jnp.int32)

    def kv_positions(last: jax.Array) -> jax.Array:
        # Slots up to `last` hold keys and values; the rest are empty (-1).
        return jnp.broadcast_to(jnp.where(slots <= last, slots, -1), (batch, window))

    def generate(params, prompt):
        empty = jnp.zeros((batch, window), jnp.int32)
        cache = model.init(
            jax.random.key(0),
            empty,
            _window_positions(batch, window),
            kv_positions=kv_positions(window - 1),
            cache_index=0,
        )["cache"]
        positions = _window_positions(batch, prompt_len)
        logits, state = model.apply(
            {"params": params, "cache": cache},
            prompt,
            positions,
            kv_positions=kv_positions(prompt_len - 1),
            cache_index=0,
            mutable=["cache"],
        )
        ids = jax.lax.dynamic_update_slice(empty, prompt, (0, 0))
        next_ids = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        def step(index, carry):
            ids, cache, next_ids = carry
            ids = ids.at[:, index].set(next_ids)
            position = jnp.full((batch, 1), index, jnp.int32)
            logits, state = model.apply(
                {"params": params, "cache": cache},
                next_ids[:, None],
                position,
                kv_positions=kv_positions(index),
                cache_index=index,
                mutable=["cache"],
            )
            return ids, state["cache"], jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        ids, _, _ = jax.lax.fori_loop(prompt_len, window, step, (ids, state["cache"], next_ids))
        return ids

    return jax.jit(generate)


def recompute_generate_fn(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    config: GPT2Config,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    steps: int | None = None,
) -> Callable[[Any, jax.Array], jax.Array]:
    """Return a jit'ed greedy loop that reruns the full window for each of `steps` tokens.

    Args:
      logits_fn: Either twin's `forward(weights, ids [batch, seq]) -> logits`.
      config: The architecture (for the context length).
      batch: Rows generated at once.
      prompt_len: Prompt length; the window is `prompt_len + new_tokens`.
      new_tokens: Tokens the window has room for.
      steps: Tokens actually generated (default `new_tokens`). Each step costs one
        full-window forward pass whatever its index.

    Raises:
      ValueError: if the window does not fit or `steps` is not in [1, new_tokens].
    """
    window = _check_window(config, prompt_len, new_tokens)
    steps = new_tokens if steps is None else steps
    if not 1 <= steps <= new_tokens:
        raise ValueError(f"steps must be in [1, {new_tokens}], got {steps}.")

    def generate(weights, prompt):
        ids = jnp.zeros((batch, window), jnp.int32)
        ids = jax.lax.dynamic_update_slice(ids, prompt, (0, 0))

        def step(index, ids):
            logits = logits_fn(weights, ids)
            next_ids = jnp.argmax(logits[:, index - 1], axis=-1).astype(jnp.int32)
            return ids.at[:, index].set(next_ids)

        return jax.lax.fori_loop(prompt_len, prompt_len + steps, step, ids)

    return jax.jit(generate)


def penzai_cached_generate_fn(
    model: pz.nn.Layer, config: GPT2Config, batch: int, prompt_len: int, new_tokens: int
) -> tuple[Callable[[Any, Any, jax.Array], jax.Array], Any, Any]:
    """Build greedy generation with Penzai's `KVCachingTransformerLM` around the Penzai twin.

    Args:
      model: The Penzai twin with dropout removed.
      config: The architecture.
      batch: Rows generated at once.
      prompt_len: Prompt length (no padding).
      new_tokens: Tokens to generate; the caches hold `prompt_len + new_tokens` slots.

    Returns:
      `(generate, weights, states)`: call `generate(weights, states, prompt)` to get
      ids [batch, window]; `weights` are the frozen model and `states` the empty caches.
    """
    window = _check_window(config, prompt_len, new_tokens)
    # pad_id -1 never occurs, so every prompt token counts (Penzai's default pad id 0 is a
    # real character id in the Shakespeare vocabulary).
    caching = sampling_mode.KVCachingTransformerLM.from_uncached(
        model, cache_len=window, batch_axes={ax.BATCH: batch}, pad_id=-1
    )
    weights, states = pz.unbind_state_vars(pz.freeze_params(caching))
    states = [_as_int32_index(state.freeze()) for state in states]

    def call(weights, states, ids):
        variables = [state.unfreeze_as_copy() for state in states]
        logits = pz.bind_variables(weights, variables)(named_tokens(ids))
        return logits.unwrap(ax.BATCH, ax.SEQ, ax.VOCABULARY), [v.freeze() for v in variables]

    def generate(weights, states, prompt):
        logits, states = call(weights, states, prompt)
        ids = jnp.zeros((batch, window), jnp.int32)
        ids = jax.lax.dynamic_update_slice(ids, prompt, (0, 0))
        next_ids = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        def step(index, carry):
            ids, states, next_ids = carry
            ids = ids.at[:, index].set(next_ids)
            logits, states = call(weights, states, next_ids[:, None])
            return ids, states, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        states = [_as_int32_index(state) for state in states]
        ids, _, _ = jax.lax.fori_loop(prompt_len, window, step, (ids, states, next_ids))
        return ids

    return jax.jit(generate), weights, states


def _as_int32_index(state: Any) -> Any:
    # The cache end index starts as a Python int; a fixed int32 keeps the loop carry's
    # type the same in every iteration.
    value = state.value
    if isinstance(value, int) or (isinstance(value, jax.Array) and value.ndim == 0):
        return dataclasses.replace(state, value=jnp.asarray(state.value, jnp.int32))
    return state


def _check_window(config: GPT2Config, prompt_len: int, new_tokens: int) -> int:
    if prompt_len < 1 or new_tokens < 1:
        raise ValueError(
            f"prompt_len and new_tokens must be positive, got {prompt_len} and {new_tokens}."
        )
    window = prompt_len + new_tokens
    if window > config.context_length:
        raise ValueError(
            f"prompt_len + new_tokens = {window} exceeds context_length "
            f"{config.context_length}; generate fewer tokens or use a shorter prompt."
        )
    return window
