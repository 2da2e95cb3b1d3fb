"""p-RoPE: p = 1 is plain RoPE (checked against Penzai's own `ApplyRoPE`), p = 0 is the
identity, and both twins rotate identically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from penzai import pz

from flax_gpt2.model import apply_rope
from gpt2_spec import GPT2Config, rope_frequencies
from gpt2_spec import axes as ax
from penzai_gpt2.model import ApplyPRoPE


def rope_config(fraction: float, theta: float = 10_000.0) -> GPT2Config:
    return GPT2Config(
        vocab_size=11,
        context_length=32,
        embedding_dim=64,
        num_layers=1,
        num_heads=4,
        position_encoding="p-rope",
        rope_fraction=fraction,
        rope_theta=theta,
    )


def random_heads(rng) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((2, 32, 4, 16)).astype(np.float32)  # [batch, seq, heads, projection]
    positions = np.stack([np.arange(32), np.r_[[-1] * 5, np.arange(27)]]).astype(np.int32)
    return x, positions


def named(x: np.ndarray) -> pz.nx.NamedArray:
    return pz.nx.wrap(jnp.asarray(x)).tag(ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION)


def named_positions(positions: np.ndarray) -> pz.nx.NamedArray:
    return pz.nx.wrap(jnp.asarray(positions)).tag(ax.BATCH, ax.SEQ)


def penzai_prope(config: GPT2Config, x, positions) -> np.ndarray:
    layer = ApplyPRoPE(frequencies=tuple(float(f) for f in rope_frequencies(config)))
    out = layer(named(x), token_positions=named_positions(positions))
    return np.asarray(out.unwrap(ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION))


def test_frequencies_follow_the_formula():
    frequencies = rope_frequencies(rope_config(0.25, theta=100.0))
    d = 16
    expected = 100.0 ** (-2.0 * np.arange(8) / d)
    np.testing.assert_allclose(frequencies[:2], expected[:2], rtol=1e-6)
    assert (frequencies[2:] == 0).all()  # floor(0.25 * 8) = 2 kept, the lowest six zeroed


@pytest.mark.parametrize("theta", [10_000.0, 500.0])
def test_p_one_equals_plain_rope(theta, rng):
    x, positions = random_heads(rng)
    plain = pz.nn.ApplyRoPE(
        embedding_axis=ax.PROJECTION, max_wavelength=theta, positions_input_name="token_positions"
    )
    expected = plain(named(x), token_positions=named_positions(positions))
    expected = np.asarray(expected.unwrap(ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION))
    config = rope_config(1.0, theta)
    np.testing.assert_allclose(penzai_prope(config, x, positions), expected, atol=2e-5)
    frequencies = jnp.asarray(rope_frequencies(config))
    flax_out = apply_rope(jnp.asarray(x), jnp.asarray(positions), frequencies)
    np.testing.assert_allclose(flax_out, expected, atol=2e-5)


def test_p_zero_is_identity(rng):
    x, positions = random_heads(rng)
    config = rope_config(0.0)
    np.testing.assert_array_equal(penzai_prope(config, x, positions), x)
    frequencies = jnp.asarray(rope_frequencies(config))
    np.testing.assert_array_equal(
        apply_rope(jnp.asarray(x), jnp.asarray(positions), frequencies), x
    )


def test_partial_keeps_low_frequency_pairs_unrotated(rng):
    x, positions = random_heads(rng)
    out = penzai_prope(rope_config(0.25), x, positions)
    kept = 2  # floor(0.25 * 16 / 2)
    unrotated = np.r_[kept:8, 8 + kept : 16]
    np.testing.assert_array_equal(out[..., unrotated], x[..., unrotated])
    assert np.abs(out[:, 1:, :, :kept] - x[:, 1:, :, :kept]).max() > 1e-2


def test_twins_rotate_identically(rng):
    x, positions = random_heads(rng)
    config = rope_config(0.25)
    frequencies = jnp.asarray(rope_frequencies(config))
    flax_out = jax.jit(apply_rope)(jnp.asarray(x), jnp.asarray(positions), frequencies)
    np.testing.assert_allclose(flax_out, penzai_prope(config, x, positions), atol=1e-6)


def test_rotation_preserves_pair_norms(rng):
    x, positions = random_heads(rng)
    out = penzai_prope(rope_config(1.0), x, positions)
    norms_in = x[..., :8] ** 2 + x[..., 8:] ** 2
    norms_out = out[..., :8] ** 2 + out[..., 8:] ** 2
    np.testing.assert_allclose(norms_out, norms_in, rtol=1e-5, atol=1e-5)
