"""Parameter creation for the Flax twin, and the logical axis names of every parameter."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config

Params = dict[str, Any]


def _dummy_tokens(config: GPT2Config) -> jax.Array:
    return jnp.zeros((1, min(config.context_length, 8)), dtype=jnp.int32)


def init_params(config: GPT2Config, rng: jax.Array) -> Params:
    """Initialize GPT-2 parameters (normal(0.02), residual projections scaled down by
    sqrt(2 * num_layers), as in GPT-2) and return them unboxed."""
    variables = GPT2(config).init(rng, _dummy_tokens(config))
    return nn.meta.unbox(variables["params"])


def logical_axes(config: GPT2Config) -> Params:
    """Return a tree like the params whose leaves are tuples of logical axis names."""
    shapes = jax.eval_shape(
        lambda key: GPT2(config).init(key, _dummy_tokens(config)), jax.random.key(0)
    )
    specs = nn.get_partition_spec(shapes["params"])
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
