"""Interventions on the Penzai twin: ablation, activation patching and steering.

Each function returns a new model with an editing layer placed in front of a `HookPoint`
(see `penzai_gpt2.cache`), so a cache taken from the new model records the edited value,
and interventions stack. The argument model is never modified. Dropout layers are left as
they are: `cache.run` and `cache.run_with_cache` remove them for the run, and
`penzai_gpt2.dropout.enable_dropout` turns disabled ones back on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from penzai import pz
from tqdm.auto import tqdm

from gpt2_spec import axes as ax
from penzai_gpt2.cache import (
    ActivationCache,
    add_hook_points,
    resolve_names,
    run,
    run_with_cache,
    select_hook_points,
)


@pz.pytree_dataclass
class OverwriteActivation(pz.nn.Layer):
    """Replaces the value where `mask` is true by `replacement` (both broadcast by axis name)."""

    replacement: pz.nx.NamedArray
    mask: pz.nx.NamedArray

    def __call__(self, value: pz.nx.NamedArray, /, **_unused_side_inputs) -> pz.nx.NamedArray:
        replacement = self.replacement.astype(value.dtype)
        return pz.nx.nmap(jnp.where)(self.mask, replacement, value)


@pz.pytree_dataclass
class AddToActivation(pz.nn.Layer):
    """Adds `delta` (broadcast by axis name) to the value, at all or some positions.

    Attributes:
      delta: The named array to add.
      positions: The `seq` indices to add it at; `None` for all of them.
    """

    delta: pz.nx.NamedArray
    positions: tuple[int, ...] | None = dataclasses.field(
        default=None, metadata={"pytree_node": False}
    )

    def __call__(self, value: pz.nx.NamedArray, /, **_unused_side_inputs) -> pz.nx.NamedArray:
        delta = self.delta.astype(value.dtype)
        if self.positions is not None:
            seq = value.named_shape[ax.SEQ]
            chosen = jnp.isin(jnp.arange(seq), jnp.asarray(self.positions))
            delta = delta * pz.nx.wrap(chosen.astype(value.dtype)).tag(ax.SEQ)
        return value + delta


def insert_before_hook(model: pz.nn.Layer, name: str, layer: pz.nn.Layer) -> pz.nn.Layer:
    """Return a copy of `model` where `layer` edits the activation `name` before it is read.

    Raises:
      ValueError: if `name` is not exactly one hook of the model.
    """
    hooked = add_hook_points(model)
    resolved = resolve_names(hooked, name)
    if resolved != [name]:
        raise ValueError(
            f"Interventions need one exact hook name, got {name!r} which matches {resolved}."
        )
    return select_hook_points(hooked, [name]).apply(lambda hook: pz.nn.Sequential([layer, hook]))


def _index_mask(size: int, axis: str, indices: Sequence[int] | None, item: str) -> pz.nx.NamedArray:
    if indices is None:
        return pz.nx.wrap(np.ones(size, dtype=bool)).tag(axis)
    values = np.asarray(list(indices), dtype=np.int64).reshape(-1)
    bad = values[(values < -size) | (values >= size)]
    if bad.size:
        raise ValueError(
            f"{item} index {int(bad[0])} is out of range for {size} {item}s; use 0..{size - 1}."
        )
    mask = np.zeros(size, dtype=bool)
    mask[values] = True
    return pz.nx.wrap(mask).tag(axis)


def _ablate(
    model: pz.nn.Layer,
    hook: str,
    axis: str,
    selected: Mapping[int, Sequence[int]],
    method: str,
    reference: ActivationCache | None,
) -> pz.nn.Layer:
    if method not in ("zero", "mean"):
        raise ValueError(f"Ablation method must be 'zero' or 'mean', got {method!r}.")
    if method == "mean" and reference is None:
        raise ValueError("Mean ablation needs reference_cache, a cache containing the hook.")
    for layer, indices in selected.items():
        name = f"blocks.{layer}.{hook}"
        if method == "zero":
            replacement = pz.nx.wrap(jnp.zeros(()))
        else:
            # The mean over every batch row and position of the reference run.
            replacement = pz.nx.nmap(jnp.mean)(reference[name].untag(ax.BATCH, ax.SEQ))
        size = _hook_axis_size(model, name, axis, reference)
        mask = _index_mask(size, axis, indices, "head" if axis == ax.HEADS else "neuron")
        model = insert_before_hook(model, name, OverwriteActivation(replacement, mask))
    return model


def _hook_axis_size(model, name, axis, reference) -> int:
    if reference is not None and name in reference:
        return reference[name].named_shape[axis]
    metadata = model.metadata
    return metadata.common_head_axes[ax.HEADS] if axis == ax.HEADS else metadata.mlp_hidden_dim


def ablate_heads(
    model: pz.nn.Layer,
    heads: Mapping[int, Sequence[int]],
    method: str = "zero",
    reference_cache: ActivationCache | None = None,
) -> pz.nn.Layer:
    """Return a model with attention heads ablated at `blocks.{layer}.attn.hook_z`.

    Args:
      model: The Penzai twin.
      heads: Layer index -> head indices to ablate.
      method: `zero` sets the heads' mixed values to 0; `mean` sets them to their mean
        over batch and positions in `reference_cache`.
      reference_cache: A cache holding `hook_z` of the ablated layers (for `mean`).
    """
    return _ablate(model, "attn.hook_z", ax.HEADS, heads, method, reference_cache)


def ablate_neurons(
    model: pz.nn.Layer,
    neurons: Mapping[int, Sequence[int]],
    method: str = "zero",
    reference_cache: ActivationCache | None = None,
) -> pz.nn.Layer:
    """Return a model with MLP neurons ablated at `blocks.{layer}.mlp.hook_post`.

    Args:
      model: The Penzai twin.
      neurons: Layer index -> neuron indices to ablate.
      method: `zero` or `mean` (over batch and positions of `reference_cache`).
      reference_cache: A cache holding `mlp.hook_post` of the ablated layers (for `mean`).
    """
    return _ablate(model, "mlp.hook_post", ax.NEURONS, neurons, method, reference_cache)


def patch_activation(
    model: pz.nn.Layer,
    name: str,
    source: pz.nx.NamedArray,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> pz.nn.Layer:
    """Return a model whose activation `name` is taken from another run (activation patching).

    Args:
      model: The Penzai twin.
      name: The hook to patch, for example `blocks.1.hook_resid_pre`.
      source: That hook's value from the other (for example the clean) run. Its `batch` and
        `seq` sizes must match those of the runs the patched model is used for.
      positions: Positions to patch; all when `None`.
      heads: Heads to patch, only for hooks with a `heads` axis; all when `None`.
    """
    shape = source.named_shape
    mask = _index_mask(shape[ax.SEQ], ax.SEQ, positions, "position")
    if heads is not None:
        if ax.HEADS not in shape:
            raise ValueError(f"Hook {name!r} has no heads axis; pass heads=None.")
        mask = mask & _index_mask(shape[ax.HEADS], ax.HEADS, heads, "head")
    return insert_before_hook(model, name, OverwriteActivation(source, mask))


def add_steering_vector(
    model: pz.nn.Layer,
    layer: int,
    vector: np.ndarray | pz.nx.NamedArray,
    scale: float = 1.0,
    positions: Sequence[int] | None = None,
    hook: str = "hook_resid_pre",
) -> pz.nn.Layer:
    """Return a model that adds `scale * vector` to the residual stream entering block `layer`.

    Args:
      model: The Penzai twin.
      layer: Block index.
      vector: A direction [embedding] (plain or named), for example a difference of two
        cached residuals.
      scale: Multiplier of the vector.
      positions: Positions (from 0) to steer; all when `None`.
      hook: The residual hook of the block to steer (`hook_resid_pre`, `hook_resid_mid`
        or `hook_resid_post`).
    """
    if not isinstance(vector, pz.nx.NamedArray):
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim != 1 or vector.shape[0] != model.metadata.embedding_dim:
            raise ValueError(
                f"A steering vector must have shape [{model.metadata.embedding_dim}] "
                f"(the embedding width), got shape {vector.shape}."
            )
        vector = pz.nx.wrap(vector).tag(ax.EMBEDDING)
    if positions is not None:
        positions = tuple(int(p) for p in positions)
        if min(positions, default=0) < 0:
            raise ValueError(f"Steering positions must be >= 0, got {positions}.")
    layer_to_add = AddToActivation(vector * scale, positions)
    return insert_before_hook(model, f"blocks.{layer}.{hook}", layer_to_add)


@dataclasses.dataclass(frozen=True)
class PatchingResult:
    """Effect of activation patching on a logit difference.

    Attributes:
      effect: Named array over the sweep axes (`blocks`, then `seq` and/or `heads`):
        (patched - corrupted) / (clean - corrupted), so 1 means the patch restores the
        clean logit difference and 0 means it changes nothing.
      labels: Axis name -> labels of its entries (block indices, positions, heads).
      clean: Logit difference of the clean run, per batch row.
      corrupted: Logit difference of the corrupted run, per batch row.
      patched: The raw patched logit differences, averaged over the batch, same axes as
        `effect`.
    """

    effect: pz.nx.NamedArray
    labels: dict[str, list[str]]
    clean: np.ndarray
    corrupted: np.ndarray
    patched: pz.nx.NamedArray


def logit_difference(
    logits: np.ndarray, answer: int | np.ndarray, wrong: int | np.ndarray, position: int = -1
) -> np.ndarray:
    """Return logit[answer] - logit[wrong] at `position` for every batch row [batch]."""
    logits = np.asarray(logits)[:, position, :]
    rows = np.arange(logits.shape[0])
    answer = np.broadcast_to(np.asarray(answer), rows.shape)
    wrong = np.broadcast_to(np.asarray(wrong), rows.shape)
    return logits[rows, answer] - logits[rows, wrong]


_RESIDUAL_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
)
_HEAD_HOOKS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern")


def _sweep_cells(hook: str, by_position: bool, num_layers: int, seq: int, heads: int):
    """Return the sweep's axis names, their sizes, and the (layer, position, head) cells."""
    if hook not in _RESIDUAL_HOOKS + _HEAD_HOOKS:
        raise ValueError(
            f"Cannot sweep hook {hook!r}; choose one of {', '.join(_RESIDUAL_HOOKS + _HEAD_HOOKS)}."
        )
    names, sizes = [ax.BLOCKS], [num_layers]
    if by_position:
        names.append(ax.SEQ)
        sizes.append(seq)
    if hook in _HEAD_HOOKS:
        names.append(ax.HEADS)
        sizes.append(heads)
    cells = []
    for index in np.ndindex(*sizes):
        cell = dict(zip(names, index, strict=True))
        cells.append((cell[ax.BLOCKS], cell.get(ax.SEQ), cell.get(ax.HEADS)))
    return names, sizes, cells


def patching_sweep(
    model: pz.nn.Layer,
    clean_tokens: np.ndarray,
    corrupted_tokens: np.ndarray,
    answer: int | np.ndarray,
    wrong: int | np.ndarray,
    hook: str = "hook_resid_pre",
    by_position: bool = True,
) -> PatchingResult:
    """Patch a hook from the clean run into the corrupted run, one cell at a time.

    Cells are every block, and per position (`by_position`) and per head (for attention
    hooks such as `attn.hook_z`). The metric is the logit difference answer - wrong at the
    last position.

    Args:
      model: The Penzai twin.
      clean_tokens: int ids [batch, seq] of the clean prompts.
      corrupted_tokens: int ids of the corrupted prompts, same shape.
      answer: The correct next token (one id, or one per batch row).
      wrong: The competing next token (one id, or one per batch row).
      hook: Hook name without the `blocks.{i}.` prefix.
      by_position: Whether to patch each position separately (else all at once).

    Returns:
      A `PatchingResult`.
    """
    clean_tokens, corrupted_tokens = np.asarray(clean_tokens), np.asarray(corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"Clean and corrupted tokens must have the same shape, got {clean_tokens.shape} "
            f"and {corrupted_tokens.shape}; pad or trim the prompts to one length."
        )
    metadata = model.metadata
    num_layers = len(resolve_names(model, f"blocks.*.{hook}"))
    names, sizes, cells = _sweep_cells(
        hook, by_position, num_layers, clean_tokens.shape[1], metadata.common_head_axes[ax.HEADS]
    )
    clean_cache = run_with_cache(model, clean_tokens, f"blocks.*.{hook}")
    clean = logit_difference(clean_cache.logits, answer, wrong)
    corrupted = logit_difference(run(model, corrupted_tokens), answer, wrong)
    patched = np.zeros(len(cells), dtype=np.float32)
    for i, (layer, position, head) in enumerate(tqdm(cells, desc=f"patching {hook}")):
        name = f"blocks.{layer}.{hook}"
        positions = None if position is None else [position]
        heads = None if head is None else [head]
        patched_model = patch_activation(model, name, clean_cache[name], positions, heads)
        patched[i] = logit_difference(run(patched_model, corrupted_tokens), answer, wrong).mean()
    patched_named = pz.nx.wrap(patched.reshape(sizes)).tag(*names)
    denominator = float(np.mean(clean - corrupted))
    if abs(denominator) < 1e-9:
        raise ValueError(
            "The clean and corrupted runs give the same logit difference, so the effect of "
            "patching is undefined; choose prompts or answer tokens that differ."
        )
    effect = (patched_named - float(np.mean(corrupted))) / denominator
    labels = {name: [str(i) for i in range(size)] for name, size in zip(names, sizes, strict=True)}
    return PatchingResult(effect, labels, clean, corrupted, patched_named)
