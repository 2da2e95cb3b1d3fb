"""One forward step with a KV cache, for each twin: the only twin-specific part of generation.

A step object is static (hashable) and pure: `init_state` makes an empty cache and
`__call__` appends tokens to it and returns their logits. Both twins derive positions
the same way from the attention mask accumulated in the cache: cumsum(mask) - 1 on real
tokens and -1 on padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from penzai import pz

from bridge.convert import flax_to_penzai
from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config
from gpt2_spec import axes as ax
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import named_tokens
from penzai_gpt2.kv_cache import KVCachedGPT2

Array = jax.Array
TwinKind = Literal["flax", "penzai"]


def positions_from_mask(mask: Array) -> Array:
    """Return int32 positions [batch, seq]: cumsum(mask) - 1 on real tokens, -1 on padding."""
    return jnp.where(mask, jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, -1)


class DecodeStep(Protocol):
    """A twin's cached forward step; instances are hashable so `jax.jit` can key on them."""

    config: GPT2Config

    def init_state(self, weights: Any, batch_size: int, cache_len: int) -> Any:
        """Return an empty cache for `batch_size` rows of `cache_len` slots."""
        ...

    def __call__(self, weights: Any, state: Any, tokens: Array, mask: Array) -> tuple[Array, Any]:
        """Append tokens [batch, seq] with mask [batch, seq]; return logits and the new state."""
        ...


class FlaxCacheState(NamedTuple):
    """The Flax twin's `cache` collection plus the mask and fill level of its slots."""

    cache: Any
    kv_mask: Array  # bool [batch, cache_len]
    end_index: Array  # int32 scalar: slots written so far


@dataclasses.dataclass(frozen=True)
class FlaxDecodeStep:
    """Cached step of the Flax twin, `flax_gpt2.model.GPT2(config, decode=True)`."""

    config: GPT2Config

    def init_state(self, weights: Any, batch_size: int, cache_len: int) -> FlaxCacheState:
        model = GPT2(self.config, decode=True)
        tokens = jnp.zeros((batch_size, cache_len), jnp.int32)
        # The init call only sizes the cache; eval_shape keeps it from computing anything.
        shapes = jax.eval_shape(
            lambda: model.init(
                jax.random.key(0), tokens, tokens, kv_positions=tokens, cache_index=0
            )["cache"]
        )
        cache = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
        kv_mask = jnp.zeros((batch_size, cache_len), jnp.bool_)
        return FlaxCacheState(cache, kv_mask, jnp.zeros((), jnp.int32))

    def __call__(
        self, weights: Any, state: FlaxCacheState, tokens: Array, mask: Array
    ) -> tuple[Array, FlaxCacheState]:
        start = state.end_index
        kv_mask = jax.lax.dynamic_update_slice(state.kv_mask, mask, (0, start))
        kv_positions = positions_from_mask(kv_mask)
        positions = jax.lax.dynamic_slice(kv_positions, (0, start), tokens.shape)
        logits, mutated = GPT2(self.config, decode=True).apply(
            {"params": weights, "cache": state.cache},
            tokens,
            positions,
            kv_positions=kv_positions,
            cache_index=start,
            mutable=["cache"],
        )
        return logits, FlaxCacheState(mutated["cache"], kv_mask, start + tokens.shape[1])


@dataclasses.dataclass(frozen=True)
class PenzaiDecodeStep:
    """Cached step of the Penzai twin through `penzai_gpt2.kv_cache.KVCachedGPT2`.

    Weights are `(model, params)`: the twin with parameter slots, and the frozen
    parameter values to bind into them.
    """

    config: GPT2Config

    def init_state(self, weights: Any, batch_size: int, cache_len: int) -> tuple[Any, ...]:
        model, _ = weights
        cached = KVCachedGPT2.from_uncached(model, batch_size, cache_len)
        return pz.unbind_state_vars(cached, freeze=True)[1]

    def __call__(
        self, weights: Any, state: tuple[Any, ...], tokens: Array, mask: Array
    ) -> tuple[Array, tuple[Any, ...]]:
        model, params = weights
        batch_size, cache_len = _penzai_cache_shape(state)
        structure = pz.unbind_state_vars(KVCachedGPT2.from_uncached(model, batch_size, cache_len))[
            0
        ]
        live_state = [value.unfreeze_as_copy() for value in state]
        cached = pz.bind_variables(structure, [*params, *live_state])
        named_mask = pz.nx.wrap(jnp.asarray(mask, jnp.bool_)).tag(ax.BATCH, ax.SEQ)
        logits = cached(named_tokens(tokens), named_mask)
        new_state = tuple(variable.freeze() for variable in live_state)
        return logits.unwrap(ax.BATCH, ax.SEQ, ax.VOCABULARY), new_state


def _penzai_cache_shape(state: tuple[Any, ...]) -> tuple[int, int]:
    for value in state:
        if str(value.label).endswith("/kv_mask"):
            shape = value.value.named_shape
            return shape[ax.BATCH], shape[ax.SEQ]
    raise ValueError("The Penzai cache state has no kv_mask variable; build it with init_state.")


@dataclasses.dataclass(frozen=True)
class TwinModel:
    """A model ready for `bridge.generate.generate`: one twin's step plus its weights.

    Attributes:
      kind: Which twin computes the logits.
      config: The architecture.
      step: The twin's static cached step.
      weights: The pytree of arrays the step reads.
    """

    kind: TwinKind
    config: GPT2Config
    step: DecodeStep
    weights: Any


def flax_twin(params: Any, config: GPT2Config) -> TwinModel:
    """Wrap Flax twin parameters for generation."""
    return TwinModel("flax", config, FlaxDecodeStep(config), params)


def penzai_twin(model: pz.nn.Layer, config: GPT2Config) -> TwinModel:
    """Wrap a Penzai twin (from `build_gpt2` or `flax_to_penzai`) for generation.

    Dropout layers are removed, so the model computes the deterministic forward pass.
    """
    slotted, params = pz.unbind_params(remove_dropout(model), freeze=True)
    pz.nn.assert_no_parameter_slots(pz.bind_variables(slotted, params))
    return TwinModel("penzai", config, PenzaiDecodeStep(config), (slotted, tuple(params)))


def make_twin(kind: str, params: Any, config: GPT2Config) -> TwinModel:
    """Build the named twin from Flax parameters (converted for Penzai through the bridge)."""
    if kind == "flax":
        return flax_twin(params, config)
    if kind == "penzai":
        return penzai_twin(flax_to_penzai(params, config), config)
    raise ValueError(f"Unknown twin {kind!r}; choose 'flax' or 'penzai'.")
