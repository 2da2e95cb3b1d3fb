"""The device mesh for training, and the shardings of parameters, optimizer state and batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flax_gpt2.params import logical_axes
from gpt2_spec import GPT2Config
from gpt2_spec import axes as ax

logger = logging.getLogger(__name__)


def parse_mesh_spec(text: str) -> dict[str, int]:
    """Parse a mesh option such as `data=2,model=4` into `{"data": 2, "model": 4}`.

    Raises:
      ValueError: on an unknown axis, a repeated axis or a size that is not a positive integer.
    """
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in ax.MESH_AXES:
            raise ValueError(
                f"Invalid mesh entry {item!r}; expected AXIS=SIZE with AXIS one of "
                f"{', '.join(ax.MESH_AXES)}, for example 'data=2,model=4'."
            )
        if name in sizes:
            raise ValueError(f"Mesh axis {name!r} is given twice in {text!r}.")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size <= 0:
            raise ValueError(f"Mesh axis {name!r} needs a positive integer size, got {value!r}.")
        sizes[name] = size
    return sizes


def resolve_mesh_shape(requested: Mapping[str, int], device_count: int) -> dict[str, int]:
    """Fill in the mesh shape so that its product is `device_count`.

    `fsdp` and `model` default to 1; `data` defaults to the devices left over, so an empty
    request means pure data parallelism over every device.

    Raises:
      ValueError: if the sizes do not multiply to the device count.
    """
    unknown = sorted(set(requested) - set(ax.MESH_AXES))
    if unknown:
        raise ValueError(f"Unknown mesh axes {unknown}; use {', '.join(ax.MESH_AXES)}.")
    fsdp = requested.get(ax.FSDP, 1)
    model = requested.get(ax.MODEL, 1)
    if ax.DATA in requested:
        data = requested[ax.DATA]
    elif device_count % (fsdp * model) == 0:
        data = device_count // (fsdp * model)
    else:
        data = 0
    shape = {ax.DATA: data, ax.FSDP: fsdp, ax.MODEL: model}
    if data * fsdp * model != device_count:
        raise ValueError(
            f"Mesh {shape} needs {data * fsdp * model or 'a divisor of'} devices but "
            f"{device_count} are available; choose sizes whose product is {device_count}."
        )
    return shape


def make_mesh(requested: Mapping[str, int] | None = None) -> Mesh:
    """Build a mesh with axes (data, fsdp, model) over all available devices."""
    devices = jax.devices()
    shape = resolve_mesh_shape(requested or {}, len(devices))
    grid = np.asarray(devices).reshape(tuple(shape[name] for name in ax.MESH_AXES))
    # Auto axes let XLA propagate shardings from the annotations, as `jax.jit` did before
    # explicit-sharding mode existed.
    return Mesh(grid, ax.MESH_AXES, axis_types=(AxisType.Auto,) * len(ax.MESH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise unless the batch splits evenly over the data-parallel axes (data x fsdp)."""
    parallel = mesh.shape[ax.DATA] * mesh.shape[ax.FSDP]
    if batch_size % parallel != 0:
        raise ValueError(
            f"Batch size {batch_size} is not divisible by the data-parallel size "
            f"data x fsdp = {parallel}; use a multiple of {parallel} or change --mesh."
        )


def _divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicate any dimension that its mesh axes do not split evenly (vocabulary 65 on 2)."""
    entries = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        parts = int(np.prod([mesh.shape[name] for name in names])) if names else 1
        entries.append(entry if size % parts == 0 else None)
    return PartitionSpec(*entries)


def param_shardings(config: GPT2Config, params: Any, mesh: Mesh) -> Any:
    """Return NamedShardings for `params` from their logical axes and the sharding rules."""
    logical = logical_axes(config)
    specs = jax.tree.map(
        lambda names: nn.logical_to_mesh_axes(names, ax.SHARDING_RULES),
        logical,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _divisible_spec(spec, leaf.shape, mesh)),
        specs,
        params,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def _dict_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey))


def optimizer_shardings(
    optimizer: optax.GradientTransformation, params: Any, shardings: Any, mesh: Mesh
) -> Any:
    """Shard each optimizer-state leaf like the parameter it mirrors; replicate the rest.

    A state leaf mirrors a parameter when its path ends with that parameter's dict keys
    and the shapes agree, as Adam's moments do. Step counters and scalars are replicated.
    """
    by_path = {
        _dict_keys(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings), strict=True
        )
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def choose(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        keys = _dict_keys(path)
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match is not None and match[0] == leaf.shape:
                return match[1]
        return replicated

    abstract_state = jax.eval_shape(optimizer.init, params)
    return jax.tree_util.tree_map_with_path(choose, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard [batch, seq] arrays along `batch` only."""
    spec = nn.logical_to_mesh_axes((ax.BATCH, ax.SEQ), ax.SHARDING_RULES)
    return NamedSharding(mesh, spec)
