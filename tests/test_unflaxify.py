"""The unflaxified Flax twin computes the Flax twin's logits and tokens; transforms are rejected."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from penzai import pz
from penzai.toolshed.unflaxify import ArgsAndKwargs, InterceptedFlaxModuleMethod

from bridge.hf import load_hf_source
from bridge.sampling import sample_tokens
from bridge.unflaxify import unflaxify_gpt2, unflaxify_module
from flax_gpt2.model import GPT2
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config

TINY = GPT2Config(
    vocab_size=37,
    context_length=16,
    embedding_dim=32,
    num_layers=2,
    num_heads=4,
    embedding_dropout=0.1,
    attention_dropout=0.1,
    residual_dropout=0.1,
)


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0))


@pytest.fixture(scope="module")
def unflaxified(params):
    return unflaxify_gpt2(params, TINY)


def flax_generate(config, params, prompt, num_new, temperature=0.0, top_k=0, seed=0):
    """Reference loop: the Flax twin on the last context_length tokens, one step at a time.

    Each window is placed at the start of a context_length buffer (causal attention makes
    the zero padding after it irrelevant), so the jitted call compiles once.
    """
    apply = jax.jit(lambda p, t: GPT2(config).apply({"params": p}, t))
    tokens = np.asarray(prompt, np.int32)
    key = jax.random.key(seed)
    for index in range(num_new):
        window = tokens[:, -config.context_length :]
        buffer = np.zeros((tokens.shape[0], config.context_length), np.int32)
        buffer[:, : window.shape[1]] = window
        last = apply(params, buffer)[:, window.shape[1] - 1]
        chosen = sample_tokens(
            last, jax.random.fold_in(key, index), jnp.float32(temperature), jnp.int32(top_k),
            jnp.float32(1.0),
        )  # fmt: skip
        tokens = np.concatenate([tokens, np.asarray(chosen)[:, None]], axis=1)
    return tokens[:, prompt.shape[1] :]


def test_logits_match_flax(unflaxified, params, rng):
    tokens = rng.integers(0, TINY.vocab_size, (3, TINY.context_length), dtype=np.int32)
    expected = GPT2(TINY).apply({"params": params}, tokens)
    actual = unflaxified.logits(tokens)
    tolerance = 1e-5 * max(1.0, float(jnp.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=0)


def test_layers_are_penzai_layers(unflaxified):
    assert isinstance(unflaxified.layer, InterceptedFlaxModuleMethod)
    names = [name for _, name in unflaxified.layer.submodule_calls]
    assert names[:2] == ["wte.__call__", "wpe.__call__"]
    assert "block_1.__call__" in names
    params = pz.unbind_params(unflaxified.layer)[1]
    assert len(params) == len(jax.tree.leaves(init_params(TINY, jax.random.key(0))))


def test_greedy_tokens_match_flax(unflaxified, params, rng):
    prompt = rng.integers(0, TINY.vocab_size, (2, 4), dtype=np.int32)
    expected = flax_generate(TINY, params, prompt, 8)
    np.testing.assert_array_equal(unflaxified.generate(prompt, 8), expected)


@pytest.mark.slow
def test_greedy_sliding_window_matches_flax(unflaxified, params, rng):
    prompt = rng.integers(0, TINY.vocab_size, (1, 12), dtype=np.int32)
    expected = flax_generate(TINY, params, prompt, 10)  # 22 tokens > context 16
    np.testing.assert_array_equal(unflaxified.generate(prompt, 10), expected)


def test_sampled_tokens_match_flax(unflaxified, params, rng):
    prompt = rng.integers(0, TINY.vocab_size, (2, 4), dtype=np.int32)
    expected = flax_generate(TINY, params, prompt, 8, temperature=1.5, top_k=10, seed=7)
    actual = unflaxified.generate(prompt, 8, temperature=1.5, top_k=10, seed=7)
    np.testing.assert_array_equal(actual, expected)
    other_seed = unflaxified.generate(prompt, 8, temperature=1.5, top_k=10, seed=8)
    assert not np.array_equal(actual, other_seed)


def test_greedy_matches_hf_generate(hf_fixture_dir):
    source = load_hf_source(hf_fixture_dir)
    with np.load(hf_fixture_dir / "generate.npz") as data:
        prompt, expected = data["single_prompt_ids"], data["single_new_ids"]
    model = unflaxify_gpt2(source.params, source.config)
    np.testing.assert_array_equal(model.generate(prompt, expected.shape[1]), expected)


def test_generate_rejects_bad_input(unflaxified):
    with pytest.raises(ValueError, match=r"Token id 37 at index \(0, 1\) is outside"):
        unflaxified.generate(np.array([[1, 37]]), 3)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        unflaxified.generate(np.array([[1, 2]]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        unflaxified.generate(np.array([[1, 2]]), 0)
    with pytest.raises(ValueError, match=r"prompt has 17 tokens but the model's context length"):
        unflaxified.generate(np.zeros((1, 17), np.int32), 1)


class Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(x)


class RematOuter(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.remat(Inner)(name="inner")(x)


class ScanOuter(nn.Module):
    @nn.compact
    def __call__(self, x):
        scanned = nn.scan(
            ScanCell, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
        )
        carry, _ = scanned(name="cells")(x, None)
        return carry


class ScanCell(nn.Module):
    @nn.compact
    def __call__(self, carry, _):
        return nn.Dense(4)(carry), None


@pytest.mark.parametrize("module_cls", [RematOuter, ScanOuter], ids=["remat", "scan"])
def test_transformed_module_is_rejected(module_cls):
    module = module_cls()
    x = jnp.ones((2, 4))
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(
        ValueError, match=r"Module '(inner|cells)' of type \w+ is wrapped in a Flax transform"
    ):
        unflaxify_module(module, variables, x)


def test_plain_module_unflaxifies():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Inner(name="inner")(x)

    module = Plain()
    x = jnp.arange(8.0).reshape(2, 4)
    variables = module.init(jax.random.key(0), x)
    layer = unflaxify_module(module, variables, x)
    np.testing.assert_allclose(layer(ArgsAndKwargs.capture(x)), module.apply(variables, x))
