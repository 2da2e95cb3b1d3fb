"""Tests for the training mesh: parsing, shardings, and sharded losses against one device."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from flax_gpt2 import sharding
from flax_gpt2.params import init_params
from flax_gpt2.settings import TrainSettings
from flax_gpt2.train_step import cross_entropy, make_optimizer, make_step_functions
from gpt2_spec import GPT2Config

CONFIG = GPT2Config(vocab_size=37, context_length=16, embedding_dim=32, num_layers=2, num_heads=4)
BATCH = 8


def test_parse_mesh_spec():
    assert sharding.parse_mesh_spec("data=2,model=4") == {"data": 2, "model": 4}
    assert sharding.parse_mesh_spec(" fsdp=2 ") == {"fsdp": 2}
    assert sharding.parse_mesh_spec("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tensor=2", "Invalid mesh entry 'tensor=2'"),
        ("data", "Invalid mesh entry 'data'"),
        ("data=2,data=4", "'data' is given twice"),
        ("model=0", "'model' needs a positive integer size, got '0'"),
        ("model=two", "'model' needs a positive integer size, got 'two'"),
    ],
    ids=["unknown-axis", "no-size", "repeated", "zero", "not-a-number"],
)
def test_parse_mesh_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        sharding.parse_mesh_spec(text)


def test_resolve_mesh_shape_defaults():
    assert sharding.resolve_mesh_shape({}, 8) == {"data": 8, "fsdp": 1, "model": 1}
    assert sharding.resolve_mesh_shape({"model": 4}, 8) == {"data": 2, "fsdp": 1, "model": 4}
    assert sharding.resolve_mesh_shape({"fsdp": 2, "model": 2}, 8)["data"] == 2


@pytest.mark.parametrize(
    "requested", [{"data": 3}, {"model": 3}, {"data": 4, "model": 4}], ids=["data", "model", "both"]
)
def test_resolve_mesh_shape_wrong_product(requested):
    with pytest.raises(ValueError, match="8 are available"):
        sharding.resolve_mesh_shape(requested, 8)


def test_batch_not_divisible():
    mesh = sharding.make_mesh({"data": 4, "model": 2})
    with pytest.raises(ValueError, match="Batch size 6 is not divisible by .* = 4"):
        sharding.check_batch_size(6, mesh)


def test_param_shardings_follow_rules():
    mesh = sharding.make_mesh({"data": 2, "model": 4})
    params = init_params(CONFIG, jax.random.key(0))
    shardings = sharding.param_shardings(CONFIG, params, mesh)
    block = shardings["block_0"]
    assert block["attn"]["query"]["kernel"].spec == PartitionSpec("fsdp", "model", None)
    assert block["attn"]["out"]["kernel"].spec == PartitionSpec("model", None, "fsdp")
    assert block["mlp"]["fc"]["kernel"].spec == PartitionSpec("fsdp", "model")
    # A vocabulary of 37 does not split over 4 devices, so that dimension is replicated.
    assert shardings["wte"]["embedding"].spec == PartitionSpec(None, "fsdp")


def test_optimizer_state_sharded_like_params():
    mesh = sharding.make_mesh({"data": 2, "model": 4})
    params = init_params(CONFIG, jax.random.key(0))
    optimizer = make_optimizer(TrainSettings(batch_size=BATCH, warmup_steps=1, steps=10))
    shardings = sharding.param_shardings(CONFIG, params, mesh)
    state = sharding.optimizer_shardings(optimizer, params, shardings, mesh)
    adam = state[1][0]
    assert adam.mu["block_1"]["mlp"]["fc"]["kernel"] == shardings["block_1"]["mlp"]["fc"]["kernel"]
    assert adam.nu["wte"]["embedding"] == shardings["wte"]["embedding"]
    assert adam.count.spec == PartitionSpec()


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, size=(BATCH, CONFIG.context_length + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def _single_device_step(params, learning_rate, inputs, targets):
    loss, grads = jax.jit(jax.value_and_grad(lambda p: cross_entropy(CONFIG, p, inputs, targets)))(
        params
    )
    new_params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return float(loss), float(optax.tree.norm(grads)), new_params


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_shape",
    [{}, {"data": 2, "model": 4}, {"data": 2, "fsdp": 2, "model": 2}],
    ids=["data-parallel", "model-split", "fsdp-and-model"],
)
def test_sharded_step_matches_one_device(mesh_shape):
    assert jax.device_count() == 8, "conftest should provide 8 virtual CPU devices"
    # Plain SGD, so that the new params show the gradients directly; Adam's first step
    # divides tiny gradients by their own size and amplifies rounding differences.
    optimizer = optax.sgd(0.1)
    params = init_params(CONFIG, jax.random.key(0))
    inputs, targets = _batch(0)
    want_loss, want_norm, want_params = _single_device_step(params, 0.1, inputs, targets)

    mesh = sharding.make_mesh(mesh_shape)
    param_shardings = sharding.param_shardings(CONFIG, params, mesh)
    opt_shardings = sharding.optimizer_shardings(optimizer, params, param_shardings, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    steps = make_step_functions(
        CONFIG, optimizer, mesh, param_shardings, opt_shardings, batch_sharding
    )
    sharded = jax.device_put(params, param_shardings)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(sharded)
    eval_loss = float(steps.evaluate(sharded, inputs, targets))
    new_params, _, stats = steps.train(sharded, opt_state, inputs, targets, jax.random.key(1))

    assert eval_loss == pytest.approx(want_loss, rel=1e-5)
    assert float(stats["loss"]) == pytest.approx(want_loss, rel=1e-5)
    assert float(stats["grad_norm"]) == pytest.approx(want_norm, rel=1e-4)
    for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    query = new_params["block_0"]["attn"]["query"]["kernel"]
    assert query.sharding.spec == param_shardings["block_0"]["attn"]["query"]["kernel"].spec
