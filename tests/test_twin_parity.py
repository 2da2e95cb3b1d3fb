"""The two twins compute the same logits from the same weights, and conversion is lossless."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from penzai import pz

from bridge.convert import flax_to_penzai, penzai_to_flax
from flax_gpt2.model import GPT2
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config, preset
from penzai_gpt2.dropout import disable_dropout, enable_dropout, remove_dropout
from penzai_gpt2.forward import forward


def tiny_config(**changes) -> GPT2Config:
    base = dict(
        vocab_size=37,
        context_length=16,
        embedding_dim=32,
        num_layers=2,
        num_heads=4,
        embedding_dropout=0.1,
        attention_dropout=0.1,
        residual_dropout=0.1,
    )
    return GPT2Config(**{**base, **changes})


def flax_logits(config, params, tokens, positions=None):
    return jax.jit(lambda p, t, q: GPT2(config).apply({"params": p}, t, q))(
        params, tokens, positions
    )


def penzai_logits(model, tokens, positions=None):
    return pz.variable_jit(forward)(model, tokens, positions)


def tolerance(logits) -> float:
    return 1e-5 * max(1.0, float(jnp.abs(logits).max()))


CONFIGS = {
    "learned": tiny_config(),
    "p-rope-0.25": tiny_config(position_encoding="p-rope", rope_fraction=0.25),
    "rope": tiny_config(position_encoding="p-rope", rope_fraction=1.0),
    "nope": tiny_config(position_encoding="p-rope", rope_fraction=0.0),
    "shakespeare-char": preset("shakespeare-char"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match(name, rng):
    config = CONFIGS[name]
    params = init_params(config, jax.random.key(1))
    tokens = rng.integers(0, config.vocab_size, (3, config.context_length), dtype=np.int32)
    expected = flax_logits(config, params, tokens)
    actual = penzai_logits(remove_dropout(flax_to_penzai(params, config)), tokens)
    assert actual.shape == (3, config.context_length, config.vocab_size)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance(expected))
    np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1))


def test_logits_match_with_padding_positions(rng):
    config = CONFIGS["learned"]
    params = init_params(config, jax.random.key(2))
    tokens = rng.integers(0, config.vocab_size, (2, 10), dtype=np.int32)
    # Row 1 is left-padded by three tokens: positions -1 there, then 0, 1, ...
    positions = np.stack([np.arange(10), np.r_[[-1, -1, -1], np.arange(7)]]).astype(np.int32)
    expected = flax_logits(config, params, tokens, positions)
    actual = penzai_logits(remove_dropout(flax_to_penzai(params, config)), tokens, positions)
    assert np.isfinite(np.asarray(actual)).all()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance(expected))


def test_round_trip_is_bit_exact():
    config = CONFIGS["p-rope-0.25"]
    params = init_params(config, jax.random.key(3))
    restored = penzai_to_flax(flax_to_penzai(params, config), config)
    flat, tree = jax.tree.flatten(params)
    flat_restored, tree_restored = jax.tree.flatten(restored)
    assert tree == tree_restored
    for before, after in zip(flat, flat_restored, strict=True):
        assert before.shape == after.shape
        assert np.asarray(before).tobytes() == np.asarray(after).tobytes()


def test_penzai_dropout_disable_enable_remove(rng):
    config = CONFIGS["learned"]
    model = flax_to_penzai(init_params(config, jax.random.key(4)), config)
    tokens = rng.integers(0, config.vocab_size, (2, 8), dtype=np.int32)
    dropouts = pz.select(model).at_instances_of(pz.nn.StochasticDropout).get_sequence()
    assert len(dropouts) == 1 + 3 * config.num_layers  # embedding, then 3 per block
    removed = penzai_logits(remove_dropout(model), tokens)
    disabled = disable_dropout(model)
    np.testing.assert_allclose(penzai_logits(disabled, tokens), removed, atol=1e-6)
    enabled = enable_dropout(disabled)
    noisy = pz.variable_jit(forward)(enabled, tokens, dropout_key=jax.random.key(0))
    assert float(jnp.abs(noisy - removed).max()) > 1e-3


def test_flax_dropout_only_in_training(rng):
    config = CONFIGS["learned"]
    params = init_params(config, jax.random.key(5))
    tokens = rng.integers(0, config.vocab_size, (2, 8), dtype=np.int32)
    model = GPT2(config)
    eval_logits = model.apply({"params": params}, tokens)
    train_logits = model.apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    assert float(jnp.abs(train_logits - eval_logits).max()) > 1e-3


def test_shape_mismatch_is_rejected():
    config = CONFIGS["learned"]
    params = init_params(config, jax.random.key(6))
    with pytest.raises(
        ValueError, match=r"block_0/attn/\w+/\w+ has shape \((32, )?4, 8\); the config expects"
    ):
        flax_to_penzai(params, config.replace(num_heads=8))


def test_missing_parameter_is_rejected():
    config = CONFIGS["learned"]
    params = init_params(config, jax.random.key(7))
    del params["ln_f"]
    with pytest.raises(ValueError, match=r"missing \['ln_f/bias', 'ln_f/scale'\]"):
        flax_to_penzai(params, config)
