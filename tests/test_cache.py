"""The Penzai activation cache: hook names, TransformerLens values, the Flax-side cache."""

import jax
import numpy as np
import pytest

from bridge.convert import flax_to_penzai
from bridge.hf import load_hf_source
from flax_gpt2 import hooks as flax_hooks
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2 import cache as pz_cache
from penzai_gpt2.forward import forward


def tiny_config(**changes) -> GPT2Config:
    base = dict(vocab_size=37, context_length=16, embedding_dim=32, num_layers=2, num_heads=4)
    return GPT2Config(**{**base, **changes})


def load_hf_fixture(folder):
    """Load the fixture checkpoint with the project's Hugging Face importer."""
    source = load_hf_source(folder)
    return source.config, source.params


@pytest.fixture(scope="module")
def fixture_model(hf_fixture_dir):
    config, params = load_hf_fixture(hf_fixture_dir)
    return config, params, flax_to_penzai(params, config)


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    return config, params, flax_to_penzai(params, config)


def tolerance_for(name: str) -> float:
    return 1e-5 if name.endswith("hook_pattern") else 1e-4


def test_cache_matches_transformerlens(fixture_model, hf_fixture_dir):
    config, _, model = fixture_model
    reference = np.load(hf_fixture_dir / "transformerlens_cache.npz")
    tokens = np.load(hf_fixture_dir / "forward.npz")["b2_input_ids"]
    cache = pz_cache.run_with_cache(model, tokens)
    arrays = cache.to_transformerlens()
    expected_names = sorted(k for k in reference.files if k not in ("logits", "input_ids"))
    assert sorted(arrays) == expected_names
    for name in expected_names:
        tol = tolerance_for(name)
        np.testing.assert_allclose(arrays[name], reference[name], atol=tol, rtol=tol, err_msg=name)
    np.testing.assert_allclose(cache.logits, reference["logits"], atol=1e-4, rtol=1e-4)


def test_flax_cache_matches_transformerlens(fixture_model, hf_fixture_dir):
    config, params, _ = fixture_model
    reference = np.load(hf_fixture_dir / "transformerlens_cache.npz")
    tokens = np.load(hf_fixture_dir / "forward.npz")["b2_input_ids"]
    logits, arrays = flax_hooks.run_with_cache(config, params, tokens)
    assert sorted(arrays) == sorted(k for k in reference.files if k not in ("logits", "input_ids"))
    for name, value in arrays.items():
        tol = tolerance_for(name)
        np.testing.assert_allclose(value, reference[name], atol=tol, rtol=tol, err_msg=name)
    np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("encoding", ["learned", "p-rope"])
def test_twin_caches_agree_key_by_key(encoding, rng):
    config = tiny_config(position_encoding=encoding, rope_fraction=0.5)
    params = init_params(config, jax.random.key(1))
    model = flax_to_penzai(params, config)
    tokens = rng.integers(0, config.vocab_size, (2, 12), dtype=np.int32)
    penzai_arrays = pz_cache.run_with_cache(model, tokens).to_transformerlens()
    _, flax_arrays = flax_hooks.run_with_cache(config, params, tokens)
    assert sorted(penzai_arrays) == sorted(flax_arrays)
    assert ("hook_pos_embed" in flax_arrays) == (encoding == "learned")
    for name, value in flax_arrays.items():
        assert penzai_arrays[name].shape == value.shape, name
        np.testing.assert_allclose(penzai_arrays[name], value, atol=1e-5, rtol=1e-5, err_msg=name)


def test_hook_names_in_forward_order(tiny_model):
    _, _, model = tiny_model
    names = pz_cache.hook_names(model)
    assert names[:2] == ["hook_embed", "hook_pos_embed"]
    assert names[-1] == "ln_final.hook_normalized"
    assert len(names) == 3 + 2 * 14
    assert names == flax_hooks.all_hook_names(tiny_config())
    assert names.index("blocks.0.attn.hook_q") < names.index("blocks.0.attn.hook_pattern")
    assert names.index("blocks.0.hook_mlp_out") < names.index("blocks.1.hook_resid_pre")


def test_cache_shapes_and_axis_names(tiny_model, rng):
    config, _, model = tiny_model
    tokens = rng.integers(0, config.vocab_size, (3, 7), dtype=np.int32)
    cache = pz_cache.run_with_cache(model, tokens)
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert dict(pattern.named_shape) == {"batch": 3, "seq": 7, "heads": 4, "kv_seq": 7}
    assert dict(cache["blocks.0.mlp.hook_post"].named_shape) == {
        "batch": 3,
        "seq": 7,
        "neurons": 128,
    }
    arrays = cache.to_transformerlens()
    assert arrays["blocks.0.attn.hook_q"].shape == (3, 7, 4, 8)
    assert arrays["blocks.0.hook_resid_post"].shape == (3, 7, 32)
    np.testing.assert_allclose(arrays["blocks.0.attn.hook_pattern"].sum(-1), 1.0, atol=1e-5)


def test_cache_leaves_logits_unchanged(tiny_model, rng):
    config, _, model = tiny_model
    tokens = rng.integers(0, config.vocab_size, (2, 9), dtype=np.int32)
    cache = pz_cache.run_with_cache(model, tokens)
    expected = forward(pz_cache.remove_dropout(model), tokens)
    np.testing.assert_allclose(cache.logits, expected, atol=1e-5)


@pytest.mark.parametrize(
    "names, expected",
    [
        ("hook_embed", ["hook_embed"]),
        (["blocks.1.hook_mlp_out", "hook_embed"], ["hook_embed", "blocks.1.hook_mlp_out"]),
        (
            "blocks.*.attn.hook_pattern",
            ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"],
        ),
        (lambda name: name.startswith("ln_final"), ["ln_final.hook_normalized"]),
    ],
    ids=["one", "list", "glob", "predicate"],
)
def test_names_filter(tiny_model, names, expected, rng):
    config, _, model = tiny_model
    tokens = rng.integers(0, config.vocab_size, (1, 5), dtype=np.int32)
    cache = pz_cache.run_with_cache(model, tokens, names)
    assert list(cache) == expected


def test_unknown_name_lists_close_matches(tiny_model):
    _, _, model = tiny_model
    with pytest.raises(
        ValueError, match=r"'blocks.0.attn.hook_patern'.*blocks.0.attn.hook_pattern"
    ):
        pz_cache.run_with_cache(model, np.zeros((1, 4), np.int32), "blocks.0.attn.hook_patern")


def test_rope_model_has_no_pos_embed_hook():
    config = tiny_config(position_encoding="p-rope")
    model = flax_to_penzai(init_params(config, jax.random.key(2)), config)
    with pytest.raises(ValueError, match="Unknown hook name 'hook_pos_embed'"):
        pz_cache.resolve_names(model, "hook_pos_embed")


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.array([[1, 37]]), "outside the model's vocabulary"),
        (np.array([[1, -1]]), "outside the model's vocabulary"),
        (np.zeros((1, 17), np.int64), "context length is 16"),
        (np.array([1, 2, 3]), r"shape \[batch, seq\]"),
        (np.array([[0.5, 1.0]]), "must be integers"),
    ],
    ids=["too-large", "negative", "too-long", "1-d", "float"],
)
def test_bad_tokens_rejected(tiny_model, tokens, message):
    _, _, model = tiny_model
    with pytest.raises((ValueError, TypeError), match=message):
        pz_cache.run_with_cache(model, tokens)


def test_flax_cache_unknown_name():
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="close matches: blocks.0.hook_resid_pre"):
        flax_hooks.run_with_cache(
            config, params, np.zeros((1, 3), np.int32), ["blocks.0.resid_pre"]
        )


def test_flax_hook_replaces_value(rng):
    config = tiny_config()
    params = init_params(config, jax.random.key(3))
    tokens = rng.integers(0, config.vocab_size, (1, 6), dtype=np.int32)
    name = "blocks.1.hook_attn_out"
    _, clean = flax_hooks.run_with_cache(config, params, tokens, [name, "blocks.1.hook_resid_mid"])
    _, edited = flax_hooks.run_with_cache(
        config, params, tokens, [name, "blocks.1.hook_resid_mid"], {name: lambda x: 0 * x}
    )
    np.testing.assert_array_equal(edited[name], 0.0)
    expected = clean["blocks.1.hook_resid_mid"] - clean[name]
    np.testing.assert_allclose(edited["blocks.1.hook_resid_mid"], expected, atol=1e-5)
