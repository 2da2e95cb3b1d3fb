"""Activation cache for the Penzai twin, keyed by TransformerLens hook names.

`add_hook_points` inserts an identity `HookPoint` layer after every layer whose output is a
TransformerLens hook (before the first residual for `hook_resid_pre`). Caching and
interventions then select hook points by name: `run_with_cache` puts a `SaveActivation`
with a `pz.StateVariable` behind each requested point, and `penzai_gpt2.interventions`
puts a layer that edits the value in front of it. Every function returns a new model.

Values and meanings follow TransformerLens. `hook_normalized` is (x - mean) / sqrt(var + eps)
before the LayerNorm's scale and bias. `hook_q` is the query projection before p-RoPE and
the 1/sqrt(d) scale. `hook_pattern` is the softmax output, and `hook_z` is the per-head
mixture of values before the output projection.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from gpt2_spec import axes as ax
from gpt2_spec import check_token_ids
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import forward
from penzai_gpt2.model import LearnedPositionEmbedding

NameFilter = str | Sequence[str] | Callable[[str], bool] | None

# TransformerLens axis order of each hook, keyed by the name's last part.
_TL_AXES = {
    "hook_pattern": (ax.BATCH, ax.HEADS, ax.SEQ, ax.KV_SEQ),
    "hook_q": (ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION),
    "hook_k": (ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION),
    "hook_v": (ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION),
    "hook_z": (ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION),
    "hook_pre": (ax.BATCH, ax.SEQ, ax.NEURONS),
    "hook_post": (ax.BATCH, ax.SEQ, ax.NEURONS),
}
_RESIDUAL_AXES = (ax.BATCH, ax.SEQ, ax.EMBEDDING)


def transformerlens_axes(name: str) -> tuple[str, ...]:
    """Return the axis names of hook `name` in TransformerLens's positional order."""
    return _TL_AXES.get(name.rsplit(".", 1)[-1], _RESIDUAL_AXES)


@pz.pytree_dataclass
class HookPoint(pz.nn.Layer):
    """Identity layer marking where the activation called `name` passes."""

    name: str = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, value: Any, /, **_unused_side_inputs) -> Any:
        return value


@pz.pytree_dataclass
class SaveActivation(pz.nn.Layer):
    """Identity layer that records the value passing through into a `StateVariable`."""

    name: str = dataclasses.field(metadata={"pytree_node": False})
    saved: pz.StateVariable = dataclasses.field(default_factory=lambda: pz.StateVariable(None))

    def __call__(self, value: Any, /, **_unused_side_inputs) -> Any:
        self.saved.value = value
        return value


def _insert_after(tree: Any, layer_type: type, name: str, nth: int = 0) -> Any:
    selection = pz.select(tree).at_instances_of(layer_type).pick_nth_selected(nth)
    if selection.count() != 1:
        raise ValueError(f"Cannot place hook {name!r}: found no {layer_type.__name__} layer.")
    return selection.insert_after(HookPoint(name))


def _hook_layer_norm(layer_norm: pz.nn.LayerNorm, name: str) -> pz.nn.LayerNorm:
    return _insert_after(layer_norm, pz.nn.Standardize, f"{name}.hook_normalized")


def _hook_attention(attention: pz.nn.Attention, prefix: str) -> pz.nn.Attention:
    # The first Affine of each input branch is the projection, before p-RoPE and scaling.
    attention = dataclasses.replace(
        attention,
        input_to_query=_insert_after(attention.input_to_query, pz.nn.Affine, f"{prefix}.hook_q"),
        input_to_key=_insert_after(attention.input_to_key, pz.nn.Affine, f"{prefix}.hook_k"),
        input_to_value=_insert_after(attention.input_to_value, pz.nn.Affine, f"{prefix}.hook_v"),
    )
    attention = dataclasses.replace(
        attention,
        query_key_to_attn=_insert_after(
            attention.query_key_to_attn, pz.nn.Softmax, f"{prefix}.hook_pattern"
        ),
        attn_value_to_output=_insert_after(
            attention.attn_value_to_output, pz.nn.NamedEinsum, f"{prefix}.hook_z"
        ),
    )
    return attention


def _hook_block(block: model_parts.TransformerBlock, index: int) -> model_parts.TransformerBlock:
    prefix = f"blocks.{index}"
    attention_residual, mlp_residual = block.sublayers
    attention_branch = pz.select(attention_residual.delta).at_instances_of(pz.nn.LayerNorm)
    attention_branch = attention_branch.apply(lambda n: _hook_layer_norm(n, f"{prefix}.ln1"))
    attention_branch = (
        pz.select(attention_branch)
        .at_instances_of(pz.nn.Attention)
        .apply(lambda a: _hook_attention(a, f"{prefix}.attn"))
    )
    attention_branch = _insert_after(attention_branch, pz.nn.Attention, f"{prefix}.hook_attn_out")

    mlp_branch = pz.select(mlp_residual.delta).at_instances_of(pz.nn.LayerNorm)
    mlp_branch = mlp_branch.apply(lambda n: _hook_layer_norm(n, f"{prefix}.ln2"))
    feed_forward = model_parts.TransformerFeedForward
    mlp_branch = _insert_after(mlp_branch, pz.nn.Affine, f"{prefix}.mlp.hook_pre")
    mlp_branch = _insert_after(mlp_branch, pz.nn.Elementwise, f"{prefix}.mlp.hook_post")
    mlp_branch = _insert_after(mlp_branch, feed_forward, f"{prefix}.hook_mlp_out")
    return dataclasses.replace(
        block,
        sublayers=[
            HookPoint(f"{prefix}.hook_resid_pre"),
            pz.nn.Residual(attention_branch),
            HookPoint(f"{prefix}.hook_resid_mid"),
            pz.nn.Residual(mlp_branch),
            HookPoint(f"{prefix}.hook_resid_post"),
        ],
    )


def add_hook_points(model: pz.nn.Layer) -> pz.nn.Layer:
    """Return a copy of the Penzai twin with a `HookPoint` at every TransformerLens hook.

    A model that already has hook points is returned unchanged.
    """
    if pz.select(model).at_instances_of(HookPoint).count():
        return model
    model = _insert_after(model, pz.nn.EmbeddingLookup, "hook_embed")
    if pz.select(model).at_instances_of(LearnedPositionEmbedding).count():
        model = (
            pz.select(model)
            .at_instances_of(LearnedPositionEmbedding)
            .apply(lambda p: pz.nn.Sequential([p, HookPoint("hook_pos_embed")]))
        )
    blocks = pz.select(model).at_instances_of(model_parts.TransformerBlock)
    model = blocks.set_sequence(
        [_hook_block(block, i) for i, block in enumerate(blocks.get_sequence())]
    )
    # After the blocks, the only LayerNorm outside them is ln_f.
    final = pz.select(model).at_instances_of(pz.nn.LayerNorm)
    final = final.pick_nth_selected(final.count() - 1)
    return final.apply(lambda n: _hook_layer_norm(n, "ln_final"))


def hook_names(model: pz.nn.Layer) -> list[str]:
    """Return every hook name of the model, in the order the forward pass reaches them."""
    hooked = add_hook_points(model)
    return [hook.name for hook in pz.select(hooked).at_instances_of(HookPoint).get_sequence()]


def resolve_names(model: pz.nn.Layer, names: NameFilter) -> list[str]:
    """Return the hook names a filter selects, in forward order.

    Args:
      model: The Penzai twin (with or without hook points).
      names: `None` for all hooks, one name, a list of names, or a predicate on names.
        A name may be a glob pattern such as `blocks.*.attn.hook_pattern`.

    Raises:
      ValueError: if a name or pattern matches no hook; the message lists close matches.
    """
    available = hook_names(model)
    if names is None:
        return available
    if callable(names):
        return [name for name in available if names(name)]
    requested = [names] if isinstance(names, str) else list(names)
    chosen: set[str] = set()
    for request in requested:
        matches = fnmatch.filter(available, request)
        if not matches:
            close = difflib.get_close_matches(request, available, n=5, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else "no close matches"
            raise ValueError(
                f"Unknown hook name {request!r} ({hint}); this model's {len(available)} hook "
                f"names run from {available[0]!r} to {available[-1]!r}."
            )
        chosen.update(matches)
    return [name for name in available if name in chosen]


def select_hook_points(model: pz.nn.Layer, names: Sequence[str]) -> pz.Selection:
    """Select the `HookPoint`s called `names` in a model that has hook points."""
    chosen = set(names)
    return pz.select(model).at_instances_of(HookPoint).where(lambda hook: hook.name in chosen)


@dataclasses.dataclass(frozen=True)
class ActivationCache(Mapping[str, pz.nx.NamedArray]):
    """Activations by TransformerLens hook name, as named arrays on the shared axis names.

    Attributes:
      activations: Hook name -> named array.
      logits: The run's logits [batch, seq, vocabulary].
    """

    activations: dict[str, pz.nx.NamedArray]
    logits: jax.Array

    def __getitem__(self, name: str) -> pz.nx.NamedArray:
        if name not in self.activations:
            close = difflib.get_close_matches(name, list(self.activations), n=5, cutoff=0.5)
            raise KeyError(f"{name!r} is not in this cache; close matches: {close}.")
        return self.activations[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def to_transformerlens(self) -> dict[str, np.ndarray]:
        """Return plain arrays in TransformerLens axis order (see `transformerlens_axes`)."""
        return {
            name: np.asarray(value.unwrap(*transformerlens_axes(name)))
            for name, value in self.activations.items()
        }


def check_tokens(model: pz.nn.Layer, tokens: np.ndarray | jax.Array) -> np.ndarray:
    """Validate token ids [batch, seq] against the model's vocabulary and context.

    NOTE: Only a learned position table fixes the context length inside the Penzai twin.
    With p-RoPE the length is not checked here, so callers holding the `GPT2Config` should
    also call `gpt2_spec.check_length` (as `bridge.inspect` does).

    Raises:
      ValueError: if the ids are not 2-D, are out of range, or exceed the context.
    """
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"Token ids must have shape [batch, seq] with seq >= 1, got shape {array.shape}; "
            "wrap a single sequence as [ids]."
        )
    array = check_token_ids(array, model.metadata.vocab_size)
    tables = pz.select(model).at_instances_of(LearnedPositionEmbedding).get_sequence()
    if tables:
        context = tables[0].table.value.named_shape[ax.SEQ]
        if array.shape[1] > context:
            raise ValueError(
                f"The sequence has {array.shape[1]} tokens but the model's context length is "
                f"{context}; shorten it to at most {context} tokens."
            )
    return array


def saving_model(model: pz.nn.Layer, names: Sequence[str]) -> pz.nn.Layer:
    """Return a copy that records the activations `names` into `SaveActivation` layers."""
    hooked = add_hook_points(remove_dropout(model))
    return select_hook_points(hooked, names).apply(
        lambda hook: pz.nn.Sequential([hook, _saver(hook.name)])
    )


def _saver(name: str) -> SaveActivation:
    # A label fixed by the hook name (not Penzai's automatic unique label) lets
    # `variable_jit` reuse one compilation for every cache of the same hooks.
    return SaveActivation(name, pz.StateVariable(None, label=f"cache:{name}"))


@pz.variable_jit
def _forward_jit(model, tokens, positions):
    return forward(model, tokens, positions)


def run_with_cache(
    model: pz.nn.Layer,
    tokens: np.ndarray | jax.Array,
    names: NameFilter = None,
    positions: np.ndarray | jax.Array | None = None,
) -> ActivationCache:
    """Run the Penzai twin with dropout removed and cache the requested activations.

    Args:
      model: The Penzai twin, with or without hook points and interventions.
      tokens: int token ids [batch, seq].
      names: Which hooks to save; see `resolve_names`. `None` saves every hook.
      positions: Optional int positions [batch, seq]; -1 marks padding.

    Returns:
      An `ActivationCache` of named arrays and the logits.
    """
    tokens = check_tokens(model, tokens)
    chosen = resolve_names(model, names)
    saving = saving_model(model, chosen)
    if positions is None:
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    logits = _forward_jit(saving, jnp.asarray(tokens), jnp.asarray(positions, jnp.int32))
    saved = {
        layer.name: layer.saved.value
        for layer in pz.select(saving).at_instances_of(SaveActivation).get_sequence()
    }
    return ActivationCache(activations={name: saved[name] for name in chosen}, logits=logits)


def run(model: pz.nn.Layer, tokens: np.ndarray | jax.Array) -> jax.Array:
    """Return logits [batch, seq, vocabulary] with dropout removed, after validating ids."""
    tokens = check_tokens(model, tokens)
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return _forward_jit(remove_dropout(model), jnp.asarray(tokens), jnp.asarray(positions))
