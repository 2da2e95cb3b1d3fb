"""Jit'ed forward passes and AdamW train steps of both twins, built from the same weights.

The Flax twin runs `GPT2.apply`. The Penzai twin is `bridge.convert.flax_to_penzai` of
the same parameters with dropout removed, split by `pz.unbind_params`, so that the
parameter values are plain pytree leaves for `jax.jit`, `jax.value_and_grad` and optax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from penzai import pz

from bridge.convert import flax_to_penzai
from flax_gpt2.model import GPT2
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import forward as penzai_forward

# nanoGPT's Shakespeare recipe: AdamW, lr 1e-3, betas (0.9, 0.99), weight decay 0.1.
LEARNING_RATE = 1e-3


def make_optimizer() -> optax.GradientTransformation:
    """Return the AdamW optimizer both twins (and the PyTorch reference) train with."""
    return optax.adamw(LEARNING_RATE, b1=0.9, b2=0.99, weight_decay=0.1)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross entropy of float32 logits [batch, seq, vocabulary]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def deterministic(config: GPT2Config) -> GPT2Config:
    """Return the config with every dropout rate set to 0, as every benchmark runs it."""
    return config.replace(embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0)


@dataclasses.dataclass
class TwinSteps:
    """Jit'ed functions of one twin and the state they take.

    Attributes:
      forward: `forward(weights, tokens) -> logits`.
      train_step: `train_step(weights, opt_state, tokens, targets) -> (weights, opt_state, loss)`.
      grad_only: `grad_only(weights, tokens, targets) -> (loss, grads)`, the backward alone.
      weights: What `forward` takes as its first argument.
      opt_state: AdamW state for `weights`.
    """

    forward: Callable[..., Any]
    train_step: Callable[..., Any]
    grad_only: Callable[..., Any]
    weights: Any
    opt_state: Any


def _steps_from_loss(logits_fn: Callable[[Any, jax.Array], jax.Array], weights: Any) -> TwinSteps:
    optimizer = make_optimizer()

    def loss_fn(w, tokens, targets):
        return cross_entropy(logits_fn(w, tokens), targets)

    def train_step(w, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(w, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, w)
        return optax.apply_updates(w, updates), opt_state, loss

    return TwinSteps(
        forward=jax.jit(logits_fn),
        train_step=jax.jit(train_step),
        grad_only=jax.jit(jax.value_and_grad(loss_fn)),
        weights=weights,
        opt_state=optimizer.init(weights),
    )


def flax_steps(config: GPT2Config, params: Any) -> TwinSteps:
    """Build the Flax twin's jit'ed forward and train step (dropout off)."""
    model = GPT2(deterministic(config))

    def logits_fn(p, tokens):
        return model.apply({"params": p}, tokens)

    return _steps_from_loss(logits_fn, params)


def penzai_steps(config: GPT2Config, params: Any) -> TwinSteps:
    """Build the Penzai twin (converted from `params`, dropout removed) and its jit'ed steps.

    The parameter values are frozen `pz.ParameterValue` leaves, rebound into the
    parameter-free model inside each traced function.
    """
    model = remove_dropout(flax_to_penzai(params, deterministic(config)))
    unbound, parameters = pz.unbind_params(model)
    values = [parameter.freeze() for parameter in parameters]

    def logits_fn(v, tokens):
        return penzai_forward(pz.bind_variables(unbound, v), tokens)

    return _steps_from_loss(logits_fn, values)


def random_params(config: GPT2Config, seed: int = 0) -> Any:
    """Initialize Flax twin parameters with GPT-2's scheme (random weights, nothing loaded)."""
    return init_params(deterministic(config), jax.random.key(seed))


def random_batch(
    config: GPT2Config, batch: int, seq: int, seed: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Return random token ids and their next-token targets, both int32 [batch, seq]."""
    ids = jax.random.randint(jax.random.key(seed), (batch, seq + 1), 0, config.vocab_size)
    ids = ids.astype(jnp.int32)
    return ids[:, :-1], ids[:, 1:]
