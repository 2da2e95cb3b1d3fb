"""Activation cache and value replacement for the Flax twin, keyed by TransformerLens names.

The Linen modules call identity `hook_*` methods at every TransformerLens hook point;
`nn.intercept_methods` reads (and optionally replaces) the values passing through them.
Arrays come back in TransformerLens axis order, which is the Flax twin's own layout.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_gpt2.model import GPT2
from gpt2_spec import GPT2Config, check_length, check_token_ids

Replacement = Callable[[jax.Array], jax.Array]

# Module name in the Flax tree -> TransformerLens prefix, for modules below a block.
_SUBMODULE_PREFIX = {"attn": "attn.", "mlp": "mlp.", "ln_1": "ln1.", "ln_2": "ln2."}


def hook_name(module_path: tuple[str, ...], method: str) -> str:
    """Return the TransformerLens name of `method` called on the module at `module_path`."""
    if not module_path:
        return method
    if module_path == ("ln_f",):
        return f"ln_final.{method}"
    block = module_path[0].removeprefix("block_")
    inner = _SUBMODULE_PREFIX[module_path[1]] if len(module_path) > 1 else ""
    return f"blocks.{block}.{inner}{method}"


def all_hook_names(config: GPT2Config) -> list[str]:
    """Return every hook name of the Flax twin for `config`, in forward order."""
    names = ["hook_embed"]
    if config.position_encoding == "learned":
        names.append("hook_pos_embed")
    for i in range(config.num_layers):
        prefix = f"blocks.{i}"
        names += [f"{prefix}.hook_resid_pre", f"{prefix}.ln1.hook_normalized"]
        names += [f"{prefix}.attn.hook_{part}" for part in ("q", "k", "v", "pattern", "z")]
        names += [f"{prefix}.hook_attn_out", f"{prefix}.hook_resid_mid"]
        names += [f"{prefix}.ln2.hook_normalized", f"{prefix}.mlp.hook_pre"]
        names += [f"{prefix}.mlp.hook_post", f"{prefix}.hook_mlp_out", f"{prefix}.hook_resid_post"]
    return [*names, "ln_final.hook_normalized"]


def _check_names(config: GPT2Config, names: Sequence[str]) -> None:
    available = all_hook_names(config)
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
            raise ValueError(
                f"Unknown hook name {name!r} (close matches: {', '.join(close) or 'none'}); "
                "see flax_gpt2.hooks.all_hook_names(config) for the full list."
            )


def run_with_cache(
    config: GPT2Config,
    params: Any,
    tokens: np.ndarray | jax.Array,
    names: Sequence[str] | None = None,
    replacements: Mapping[str, Replacement] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the Flax twin without dropout, caching hook values and optionally replacing some.

    Args:
      config: The architecture.
      params: The Flax twin's parameter tree.
      tokens: int token ids [batch, seq].
      names: Hooks to cache (all when `None`).
      replacements: Hook name -> function of the value whose result flows on in place of
        the value. Cached values are the replaced ones.

    Returns:
      Logits [batch, seq, vocabulary] and hook name -> array in TransformerLens axis order.

    Raises:
      ValueError: on unknown hook names or invalid token ids.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"Token ids must have shape [batch, seq], got shape {tokens.shape}.")
    tokens = check_token_ids(tokens, config.vocab_size)
    check_length(tokens.shape[1], config)
    names = list(all_hook_names(config) if names is None else names)
    replacements = dict(replacements or {})
    _check_names(config, [*names, *replacements])
    logits, cache = _traced_run(config, params, jnp.asarray(tokens), names, replacements)
    return np.asarray(logits), {name: np.asarray(cache[name]) for name in names}


def _traced_run(config, params, tokens, names, replacements):
    cached_names = set(names)

    def run(params, tokens):
        cache: dict[str, jax.Array] = {}

        def interceptor(next_fun, args, kwargs, context):
            if not context.method_name.startswith("hook_"):
                return next_fun(*args, **kwargs)
            name = hook_name(tuple(context.module.path), context.method_name)
            value = next_fun(*args, **kwargs)
            if name in replacements:
                value = replacements[name](value)
            if name in cached_names:
                cache[name] = value
            return value

        with nn.intercept_methods(interceptor):
            logits = GPT2(config).apply({"params": params}, tokens)
        return logits, cache

    # Replacement functions are Python callables, so each call traces afresh.
    return jax.jit(run)(params, tokens)
