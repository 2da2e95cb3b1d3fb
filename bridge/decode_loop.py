"""The compiled prefill + decode loop that `bridge.generate` runs for either twin.

One `jax.jit` function contains the whole generation. It runs the prefill call on the
left-padded prompts, then a `jax.lax.while_loop` that samples a token per row and stops
each row at its end-of-sequence id. The loop ends when every row is done or the requested
number of tokens is reached. Sampling settings, the seed and the token budget are traced
values, so the function compiles once per (twin, batch size, prompt-length bucket,
new-token bucket, sliding window, streaming) and is reused for every other setting.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from bridge.decode_steps import DecodeStep
from bridge.sampling import sample_tokens

logger = logging.getLogger(__name__)
Array = jax.Array

# Number of times `run_generation` has been traced in this process; tests read it to
# check that a second call with the same shapes compiles nothing.
trace_count = 0

# Streaming listeners by id. The compiled loop passes the id of the current call's
# listener to `_emit_tokens`, so one compiled function serves every callback.
TokenListener = Callable[[int, np.ndarray, np.ndarray], None]
_listeners: dict[int, TokenListener] = {}
_listener_ids = itertools.count(1)
_listeners_lock = threading.Lock()


class Controls(NamedTuple):
    """Per-call settings, passed as traced scalars so changing them does not recompile."""

    max_new_tokens: Array  # int32
    temperature: Array  # float32, 0 means greedy
    top_k: Array  # int32, 0 means off
    top_p: Array  # float32, 1 means off
    seed: Array  # int32
    eos_id: Array  # int32, -1 means no end-of-sequence id
    pad_id: Array  # int32, written after a row has finished
    listener_id: Array  # int32, 0 means no streaming listener


class _Carry(NamedTuple):
    index: Array  # int32: number of tokens sampled so far
    logits: Array  # float32 [batch, vocabulary]: logits for the next token
    state: Any  # the twin's cache
    buffer: Array  # int32 [batch, prompt_bucket + new_bucket]: prompts, then new tokens
    buffer_mask: Array  # bool, same shape: False on padding
    done: Array  # bool [batch]: the row has produced its end-of-sequence id
    lengths: Array  # int32 [batch]: new tokens per row, the end-of-sequence id included


def register_listener(listener: TokenListener) -> int:
    """Store a streaming listener and return the id to pass in `Controls.listener_id`."""
    with _listeners_lock:
        listener_id = next(_listener_ids)
        _listeners[listener_id] = listener
    return listener_id


def unregister_listener(listener_id: int) -> None:
    with _listeners_lock:
        _listeners.pop(listener_id, None)


def _emit_tokens(listener_id, index, tokens, active) -> None:
    listener = _listeners.get(int(listener_id))
    if listener is not None:
        listener(int(index), np.asarray(tokens), np.asarray(active))


def _sample_and_record(carry: _Carry, controls: Controls, prompt_bucket: int, stream: bool):
    """Sample the next token of every row and write it after the row's earlier tokens."""
    key = jax.random.fold_in(jax.random.key(controls.seed), carry.index)
    token = sample_tokens(carry.logits, key, controls.temperature, controls.top_k, controls.top_p)
    active = ~carry.done
    token = jnp.where(active, token, controls.pad_id)
    slot = (0, prompt_bucket + carry.index)
    buffer = jax.lax.dynamic_update_slice(carry.buffer, token[:, None], slot)
    buffer_mask = jax.lax.dynamic_update_slice(carry.buffer_mask, active[:, None], slot)
    # An end-of-sequence id inside the prompt never gets here, so it does not stop a row.
    done = carry.done | (active & (token == controls.eos_id))
    if stream:
        io_callback(
            _emit_tokens, None, controls.listener_id, carry.index, token, active, ordered=True
        )
    return token, carry._replace(
        buffer=buffer,
        buffer_mask=buffer_mask,
        done=done,
        lengths=carry.lengths + active.astype(jnp.int32),
    )


def _loop(carry: _Carry, num_steps: Array, advance: Callable[[_Carry, Array], _Carry], record):
    def keep_going(c: _Carry) -> Array:
        return (c.index < num_steps) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        token, c = record(c)
        c = advance(c, token)
        return c._replace(index=c.index + 1)

    return jax.lax.while_loop(keep_going, body, carry)


@functools.partial(jax.jit, static_argnames=("step", "new_bucket", "sliding_window", "stream"))
def run_generation(
    step: DecodeStep,
    weights: Any,
    tokens: Array,
    mask: Array,
    controls: Controls,
    *,
    new_bucket: int,
    sliding_window: bool,
    stream: bool,
) -> tuple[Array, Array, Array]:
    """Generate up to `controls.max_new_tokens` tokens for each left-padded prompt.

    Args:
      step: The twin's cached forward step.
      weights: The arrays `step` reads.
      tokens: int32 prompts [batch, prompt_bucket], LEFT-padded, ids already validated.
      mask: bool [batch, prompt_bucket], False on padding.
      controls: Sampling settings, seed, token budget and ids.
      new_bucket: Static upper bound on `controls.max_new_tokens`.
      sliding_window: Whether tokens past the context are predicted from the last
        context_length tokens, recomputed for every token once the cache is full.
      stream: Whether each sampled token is sent to the registered listener.

    Returns:
      new tokens int32 [batch, new_bucket] (rows padded with `pad_id` after they end),
      their per-row counts int32 [batch], and whether each row ended at its
      end-of-sequence id, bool [batch].
    """
    global trace_count
    trace_count += 1
    logger.debug("Tracing the generation loop for prompts of shape %s", tokens.shape)
    batch_size, prompt_bucket = tokens.shape
    context = step.config.context_length
    cache_len = prompt_bucket + (min(new_bucket, context) if sliding_window else new_bucket)

    state = step.init_state(weights, batch_size, cache_len)
    logits, state = step(weights, state, tokens, mask)
    # Slots a row never reaches, after it or every row has ended, read as pad_id.
    padding = jnp.full((batch_size, new_bucket), controls.pad_id, jnp.int32)
    carry = _Carry(
        index=jnp.zeros((), jnp.int32),
        logits=logits[:, -1],  # left padding puts every row's last token in the last column
        state=state,
        buffer=jnp.concatenate([tokens, padding], axis=1),
        buffer_mask=jnp.concatenate([mask, jnp.zeros_like(padding, jnp.bool_)], axis=1),
        done=jnp.zeros((batch_size,), jnp.bool_),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )

    def record(c: _Carry):
        return _sample_and_record(c, controls, prompt_bucket, stream)

    def cached_advance(c: _Carry, token: Array) -> _Carry:
        new_mask = jnp.ones((batch_size, 1), jnp.bool_)
        logits, state = step(weights, c.state, token[:, None], new_mask)
        return c._replace(logits=logits[:, -1], state=state)

    if not sliding_window:
        carry = _loop(carry, controls.max_new_tokens, cached_advance, record)
        return carry.buffer[:, prompt_bucket:], carry.lengths, carry.done

    # The cache is exact while the longest row still fits the context. After that, each
    # token is predicted from a fresh forward pass over the last `context` tokens.
    longest_prompt = jnp.max(jnp.sum(mask, axis=1, dtype=jnp.int32))
    cached_steps = jnp.minimum(controls.max_new_tokens, context - longest_prompt)

    def window_advance(c: _Carry, token: Array) -> _Carry:
        start = (0, prompt_bucket + c.index + 1 - context)
        window = jax.lax.dynamic_slice(c.buffer, start, (batch_size, context))
        window_mask = jax.lax.dynamic_slice(c.buffer_mask, start, (batch_size, context))
        fresh = step.init_state(weights, batch_size, context)
        logits, _ = step(weights, fresh, window, window_mask)
        return c._replace(logits=logits[:, -1])

    carry = _loop(carry, cached_steps, cached_advance, record)
    carry = _loop(carry, controls.max_new_tokens, window_advance, record)
    return carry.buffer[:, prompt_bucket:], carry.lengths, carry.done
