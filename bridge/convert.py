"""Flax twin parameters <-> Penzai twin, losslessly.

Each Flax parameter path maps to a Penzai parameter label by its last component (a
table of suffixes), and its positional axes are tagged with the logical axis names the
Flax twin already declares. Converting back unwraps the named array in the Flax axis
order, so the round trip is bit-exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from penzai import pz

from flax_gpt2.params import Params, init_params, logical_axes
from gpt2_spec import GPT2Config
from penzai_gpt2.model import build_gpt2


def penzai_label(flax_path: tuple[str, ...]) -> str:
    """Return the Penzai parameter label for a Flax parameter path."""
    *parents, leaf = flax_path
    prefix = "/".join(parents)
    if leaf == "embedding":  # nn.Embed table -> pz.nn.EmbeddingTable
        return f"{prefix}.embeddings"
    if leaf == "kernel":  # Dense kernel -> the Linear inside pz.nn.Affine
        return f"{prefix}/Linear.weights"
    if leaf == "scale":  # LayerNorm scale -> the Linear inside pz.nn.LayerNorm
        return f"{prefix}/scale.weights"
    if leaf == "bias" and parents[-1].startswith("ln_"):
        return f"{prefix}/shift.bias"
    if leaf == "bias":
        return f"{prefix}/AddBias.bias"
    raise ValueError(f"No Penzai label for Flax parameter {'/'.join(flax_path)!r}.")


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(key, "key", key)) for key in path)


def _axis_names_by_path(config: GPT2Config) -> dict[tuple[str, ...], tuple[str, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(
        logical_axes(config), is_leaf=lambda x: isinstance(x, tuple)
    )[0]
    return {_path_names(path): names for path, names in leaves}


def _shapes_by_path(config: GPT2Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {_path_names(path): tuple(leaf.shape) for path, leaf in leaves}


def flax_to_penzai(params: Params, config: GPT2Config) -> pz.nn.Layer:
    """Build the Penzai twin carrying the given Flax parameters.

    Raises:
      ValueError: if a parameter is missing, extra, or has the wrong shape.
    """
    axis_names = _axis_names_by_path(config)
    shapes = _shapes_by_path(config)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    given = {_path_names(path): value for path, value in leaves}
    missing = sorted("/".join(p) for p in set(axis_names) - set(given))
    extra = sorted("/".join(p) for p in set(given) - set(axis_names))
    if missing or extra:
        raise ValueError(
            f"Parameters do not match the config: missing {missing}, unexpected {extra}."
        )
    variables = []
    for path, names in axis_names.items():
        value = jnp.asarray(given[path])
        if value.shape != shapes[path]:
            raise ValueError(
                f"Parameter {'/'.join(path)} has shape {value.shape}; the config expects "
                f"{shapes[path]} for axes {names}."
            )
        named = pz.nx.wrap(value).tag(*names)
        variables.append(pz.Parameter(value=named, label=penzai_label(path)))
    model = pz.bind_variables(build_gpt2(config), variables)
    pz.nn.assert_no_parameter_slots(model)
    return model


def penzai_to_flax(model: pz.nn.Layer, config: GPT2Config) -> Params:
    """Return the Flax parameter tree of a Penzai twin, in the Flax twin's axis order."""
    by_label = {param.label: param.value for param in pz.unbind_params(model)[1]}
    params: dict[str, Any] = {}
    for path, names in _axis_names_by_path(config).items():
        label = penzai_label(path)
        if label not in by_label:
            raise ValueError(f"The Penzai model has no parameter {label!r}.")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = by_label[label].unwrap(*names)
    return params
