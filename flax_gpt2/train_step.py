"""The optimizer, the loss, and the jit-compiled, sharded train and eval steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_gpt2.model import GPT2
from flax_gpt2.settings import TrainSettings
from gpt2_spec import GPT2Config


def make_schedule(settings: TrainSettings) -> optax.Schedule:
    """Linear warmup to the peak learning rate, then cosine decay to the minimum."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        decay_steps=settings.decay_steps,
        end_value=settings.min_learning_rate,
    )


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with weight decay on tensors of rank >= 2 only."""
    adamw = optax.adamw(
        make_schedule(settings),
        b1=settings.beta1,
        b2=settings.beta2,
        weight_decay=settings.weight_decay,
        # Biases and LayerNorm scales are vectors; decaying them does not regularize.
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    )
    if settings.grad_clip == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip), adamw)


def cross_entropy(
    config: GPT2Config,
    params: Any,
    inputs: jax.Array,
    targets: jax.Array,
    dropout_key: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Mean next-token cross-entropy of `inputs` [batch, seq] against `targets` [batch, seq].

    With a `dropout_key` dropout is active; without one the model is deterministic. With a
    `mesh`, the model pins its activations to the shardings of the logical axis rules.
    """
    deterministic = dropout_key is None
    rngs = None if deterministic else {"dropout": dropout_key}
    model = GPT2(config, mesh=mesh)
    logits = model.apply({"params": params}, inputs, deterministic=deterministic, rngs=rngs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return losses.mean()


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """Compiled steps bound to one mesh.

    Attributes:
      train: (params, opt_state, inputs, targets, dropout_key) ->
        (params, opt_state, {"loss", "grad_norm"}); params and opt_state are donated.
      evaluate: (params, inputs, targets) -> mean loss, without dropout.
    """

    train: Callable[..., Any]
    evaluate: Callable[..., Any]


def make_step_functions(
    config: GPT2Config,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    param_shardings: Any,
    opt_shardings: Any,
    batch_sharding: NamedSharding,
) -> StepFunctions:
    """Jit the train and eval steps with explicit in and out shardings on `mesh`.

    Inside the steps the model also constrains its activations (batch over data x fsdp,
    heads and neurons over model) by the logical axis rules.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def train_step(params, opt_state, inputs, targets, dropout_key):
        loss, grads = jax.value_and_grad(
            lambda p: cross_entropy(config, p, inputs, targets, dropout_key, mesh)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    def eval_step(params, inputs, targets):
        return cross_entropy(config, params, inputs, targets, mesh=mesh)

    train = jax.jit(
        train_step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding, batch_sharding, replicated),
        out_shardings=(param_shardings, opt_shardings, replicated),
        donate_argnums=(0, 1),
    )
    evaluate = jax.jit(
        eval_step,
        in_shardings=(param_shardings, batch_sharding, batch_sharding),
        out_shardings=replicated,
    )
    return StepFunctions(train, evaluate)
