"""The sampling rules on hand-made logits: greedy, temperature, top-k, top-p and their mix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridge.sampling import filter_logits, sample_tokens

# Probabilities 0.5, 0.3, 0.15, 0.05 in a shuffled order, so sorting is exercised.
PROBS = np.array([0.15, 0.5, 0.05, 0.3], dtype=np.float32)
LOGITS = jnp.asarray(np.log(PROBS)[None, :])


def kept(logits) -> list[int]:
    return sorted(np.flatnonzero(np.isfinite(np.asarray(logits)[0])).tolist())


@pytest.mark.parametrize(
    "top_k, expected",
    [
        (1, [1]),
        (2, [1, 3]),
        (3, [0, 1, 3]),
        (4, [0, 1, 2, 3]),
        (0, [0, 1, 2, 3]),
        (9, [0, 1, 2, 3]),
    ],
)
def test_top_k_keeps_largest(top_k, expected):
    assert kept(filter_logits(LOGITS, jnp.int32(top_k), jnp.float32(1.0))) == expected


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (1e-6, [1]),  # the most likely token always survives
        (0.5, [1]),  # 0.5 before the second token is not below 0.5
        (0.51, [1, 3]),
        (0.8, [1, 3]),
        (0.81, [0, 1, 3]),
        (1.0, [0, 1, 2, 3]),
    ],
)
def test_top_p_keeps_nucleus(top_p, expected):
    assert kept(filter_logits(LOGITS, jnp.int32(0), jnp.float32(top_p))) == expected


def test_top_p_renormalizes_after_top_k():
    # After top-k=3 the probabilities are 0.5/0.95, 0.3/0.95, 0.15/0.95, so the mass
    # before the third token is 0.842: top_p=0.85 keeps it, top_p=0.84 does not.
    assert kept(filter_logits(LOGITS, jnp.int32(3), jnp.float32(0.85))) == [0, 1, 3]
    assert kept(filter_logits(LOGITS, jnp.int32(3), jnp.float32(0.84))) == [1, 3]


def test_filter_keeps_values_it_keeps():
    filtered = np.asarray(filter_logits(LOGITS, jnp.int32(2), jnp.float32(1.0)))
    np.testing.assert_array_equal(filtered[0, [1, 3]], np.asarray(LOGITS)[0, [1, 3]])


def test_filter_is_per_row():
    logits = jnp.asarray(np.log(np.stack([PROBS, PROBS[::-1]])))
    filtered = np.asarray(filter_logits(logits, jnp.int32(1), jnp.float32(1.0)))
    assert np.flatnonzero(np.isfinite(filtered[0])).tolist() == [1]
    assert np.flatnonzero(np.isfinite(filtered[1])).tolist() == [2]


def test_zero_temperature_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (5, 11))
    for seed in range(3):
        tokens = sample_tokens(
            logits, jax.random.key(seed), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0)
        )
        np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))


def test_top_k_one_is_argmax_at_any_temperature():
    logits = jax.random.normal(jax.random.key(1), (5, 11))
    tokens = sample_tokens(
        logits, jax.random.key(2), jnp.float32(5.0), jnp.int32(1), jnp.float32(1.0)
    )
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))


def test_same_key_same_tokens():
    logits = jax.random.normal(jax.random.key(3), (8, 11))
    args = (jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    first = sample_tokens(logits, jax.random.key(4), *args)
    again = sample_tokens(logits, jax.random.key(4), *args)
    other = sample_tokens(logits, jax.random.key(5), *args)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_draws_follow_softmax():
    rows = 20_000
    logits = jnp.broadcast_to(LOGITS, (rows, 4))
    tokens = np.asarray(
        jax.jit(sample_tokens)(
            logits, jax.random.key(6), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0)
        )
    )
    frequencies = np.bincount(tokens, minlength=4) / rows
    # Binomial standard error at p=0.5 and 20,000 draws is 0.0035; allow about 4 of them.
    np.testing.assert_allclose(frequencies, PROBS, atol=0.015)


def test_temperature_sharpens_and_flattens():
    rows = 20_000
    logits = jnp.broadcast_to(LOGITS, (rows, 4))
    draw = jax.jit(sample_tokens)

    def argmax_share(temperature: float) -> float:
        tokens = draw(
            logits, jax.random.key(7), jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0)
        )
        return float(np.mean(np.asarray(tokens) == 1))

    assert argmax_share(0.1) > 0.99
    assert 0.45 < argmax_share(1.0) < 0.55
    assert argmax_share(10.0) < 0.35


def test_filtered_tokens_are_never_drawn():
    rows = 5_000
    logits = jnp.broadcast_to(LOGITS, (rows, 4))
    tokens = sample_tokens(
        logits, jax.random.key(8), jnp.float32(1.0), jnp.int32(3), jnp.float32(0.6)
    )
    assert set(np.unique(np.asarray(tokens)).tolist()) == {1, 3}
