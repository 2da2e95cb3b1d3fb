"""Turn a Flax Linen module with its params into a Penzai layer, and generate text from it.

`penzai.toolshed.unflaxify.unflaxify_apply` (penzai 0.2.5) re-creates every submodule call
as an `InterceptedFlaxModuleMethod` layer that Penzai selectors can inspect or replace.
Two kinds of module trip it:
- a module calling its own methods (the Flax twin's identity `hook_*` methods) fails an
  internal assertion, so those calls run inline here and do not appear as layers;
- transformed modules (`nn.remat`, `nn.scan`, `nn.vmap`, ...) are not supported by
  penzai and are rejected with a ValueError before penzai traces them.

Generation recomputes a fixed window of at most `context_length` tokens at every step,
in one compiled loop, and picks tokens with the shared rules of `bridge.sampling`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.toolshed import unflaxify as penzai_unflaxify

from bridge.sampling import sample_tokens
from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config, check_length, check_token_ids

logger = logging.getLogger(__name__)

# Flax builds the classes of lifted modules (remat, scan, vmap, jit, ...) in this module.
_TRANSFORMS_MODULE = "flax.linen.transforms"


def _inline_self_calls_interceptor():
    """Return a Flax interceptor for `unflaxify_apply`'s trace.

    It rejects transformed modules and runs a module's calls to its own methods
    without further interceptors, which penzai's tracer cannot handle.
    """
    active_paths: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if type(module).__module__ == _TRANSFORMS_MODULE:
            raise ValueError(
                f"Module {module.name!r} of type {type(module).__name__} is wrapped in a Flax "
                "transform (nn.remat, nn.scan, nn.vmap, ...); penzai's unflaxify does not "
                "support transformed modules. Unflaxify a version of the model built without "
                "the transform."
            )
        if context.method_name == "setup":
            return next_fun(*args, **kwargs)
        path = tuple(module.scope.path)
        if path in active_paths:
            return context.orig_method(*args, **kwargs)
        active_paths.append(path)
        try:
            return next_fun(*args, **kwargs)
        finally:
            active_paths.pop()

    return interceptor


def unflaxify_module(
    module: nn.Module, variables: dict[str, Any], *example_args: Any, **example_kwargs: Any
) -> pz.nn.Layer:
    """Convert `module` bound to `variables` into a Penzai layer.

    Args:
      module: An unbound Flax Linen module.
      variables: Its variables, for example `{"params": params}`.
      *example_args: Arguments of one call, used only to trace which submodules run.
      **example_kwargs: Keyword arguments of that call.

    Returns:
      An `InterceptedFlaxModuleMethod`, called as `layer(ArgsAndKwargs.capture(...))`.

    Raises:
      ValueError: if the module contains a transformed (remat, scan, ...) submodule.
    """
    with nn.intercept_methods(_inline_self_calls_interceptor()):
        layer = penzai_unflaxify.unflaxify_apply(module, variables, *example_args, **example_kwargs)
    logger.debug("Unflaxified %s", type(module).__name__)
    return layer


@functools.partial(jax.jit, static_argnames=("num_new", "window"))
def _generate_loop(layer, prompt, num_new, window, key, temperature, top_k, top_p):
    """Append `num_new` tokens to `prompt` [batch, prompt_len], recomputing a window each step."""
    batch, prompt_len = prompt.shape
    buffer = jnp.zeros((batch, prompt_len + num_new), jnp.int32).at[:, :prompt_len].set(prompt)

    def step(index, buffer):
        length = prompt_len + index  # tokens present before this step
        start = jnp.maximum(length - window, 0)
        tokens = jax.lax.dynamic_slice_in_dim(buffer, start, window, axis=1)
        logits = layer(penzai_unflaxify.ArgsAndKwargs.capture(tokens))
        last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)
        chosen = sample_tokens(last, jax.random.fold_in(key, index), temperature, top_k, top_p)
        return jax.lax.dynamic_update_index_in_dim(buffer, chosen, length, axis=1)

    buffer = jax.lax.fori_loop(0, num_new, step, buffer)
    return buffer[:, prompt_len:]


@dataclasses.dataclass(frozen=True)
class UnflaxifiedGPT2:
    """The Flax twin as a Penzai layer, with logits and generation.

    Attributes:
      layer: The unflaxified `GPT2` call; select and patch its sublayers with `pz.select`.
      config: The architecture.
    """

    layer: pz.nn.Layer
    config: GPT2Config

    def logits(self, tokens: np.ndarray | jax.Array) -> jax.Array:
        """Return float32 logits [batch, seq, vocabulary] of token ids [batch, seq].

        Raises:
          ValueError: for ids outside the vocabulary or longer than the context.
        """
        tokens = check_token_ids(np.asarray(tokens), self.config.vocab_size)
        check_length(tokens.shape[-1], self.config, what="input")
        frozen = pz.freeze_params(self.layer)
        return jax.jit(lambda m, t: m(penzai_unflaxify.ArgsAndKwargs.capture(t)))(frozen, tokens)

    def generate(
        self,
        prompt_ids: np.ndarray,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Generate `max_new_tokens` tokens after each prompt row, without a KV cache.

        Each step runs the model on the last `min(context_length, total length)` tokens.

        Args:
          prompt_ids: int token ids [batch, prompt_len], all rows the same length.
          max_new_tokens: Number of tokens to add.
          temperature: 0 means greedy; otherwise the softmax temperature.
          top_k: Sample among the k most likely tokens; None keeps all.
          top_p: Sample from the smallest set reaching probability p; None keeps all.
          seed: Seed of the sampling keys (step i uses `fold_in(key(seed), i)`).

        Returns:
          int32 new token ids [batch, max_new_tokens].
        """
        prompt = check_token_ids(np.asarray(prompt_ids), self.config.vocab_size)
        if prompt.ndim != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt_ids must be [batch, prompt_len >= 1], got {prompt.shape}.")
        check_length(prompt.shape[1], self.config)
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        window = min(self.config.context_length, prompt.shape[1] + max_new_tokens)
        new = _generate_loop(
            pz.freeze_params(self.layer),
            jnp.asarray(prompt),
            max_new_tokens,
            window,
            jax.random.key(seed),
            jnp.float32(temperature),
            jnp.int32(top_k or 0),
            jnp.float32(1.0 if top_p is None else top_p),
        )
        return np.asarray(new)


def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 or None, got {top_k!r}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}.")


def unflaxify_gpt2(params: dict[str, Any], config: GPT2Config) -> UnflaxifiedGPT2:
    """Unflaxify the Flax twin with `params`; dropout stays off (deterministic calls)."""
    example = jnp.zeros((1, min(config.context_length, 8)), jnp.int32)
    layer = unflaxify_module(GPT2(config), {"params": params}, example)
    return UnflaxifiedGPT2(layer=layer, config=config)
