"""Interventions on the Penzai twin: ablation, patching, sweeps and steering."""

import jax
import numpy as np
import pytest
from penzai import pz

from bridge.convert import flax_to_penzai
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2 import interventions as iv
from penzai_gpt2.cache import run, run_with_cache
from penzai_gpt2.dropout import disable_dropout, enable_dropout


@pytest.fixture(scope="module")
def setup():
    config = GPT2Config(
        vocab_size=37,
        context_length=16,
        embedding_dim=32,
        num_layers=2,
        num_heads=4,
        residual_dropout=0.1,
    )
    params = init_params(config, jax.random.key(0))
    # Larger weights than the initializer's give heads with distinct, visible effects.
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, params)
    tokens = np.random.default_rng(0).integers(0, 37, (2, 8), dtype=np.int32)
    return config, params, flax_to_penzai(params, config), tokens


def test_zero_ablate_head_removes_its_output(setup):
    _, params, model, tokens = setup
    clean = run_with_cache(model, tokens)
    ablated = run_with_cache(iv.ablate_heads(model, {1: [2]}), tokens)
    z_clean = clean.to_transformerlens()["blocks.1.attn.hook_z"]
    z_ablated = ablated.to_transformerlens()["blocks.1.attn.hook_z"]
    np.testing.assert_array_equal(z_ablated[:, :, 2], 0.0)
    np.testing.assert_array_equal(z_ablated[:, :, [0, 1, 3]], z_clean[:, :, [0, 1, 3]])
    # attn_out loses exactly head 2's term z_2 @ W_O[2].
    w_out = np.asarray(params["block_1"]["attn"]["out"]["kernel"])
    head_term = np.einsum("btp,pd->btd", z_clean[:, :, 2], w_out[2])
    expected = clean.to_transformerlens()["blocks.1.hook_attn_out"] - head_term
    actual = ablated.to_transformerlens()["blocks.1.hook_attn_out"]
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_mean_ablate_head_uses_reference_mean(setup):
    _, _, model, tokens = setup
    reference = run_with_cache(model, tokens, "blocks.0.attn.hook_z")
    ablated = run_with_cache(iv.ablate_heads(model, {0: [1]}, "mean", reference), tokens)
    z_reference = reference.to_transformerlens()["blocks.0.attn.hook_z"]
    z_ablated = ablated.to_transformerlens()["blocks.0.attn.hook_z"]
    expected = np.broadcast_to(z_reference[:, :, 1].mean(axis=(0, 1)), z_ablated[:, :, 1].shape)
    np.testing.assert_allclose(z_ablated[:, :, 1], expected, atol=1e-6)


def test_zero_ablate_neurons(setup):
    _, params, model, tokens = setup
    clean = run_with_cache(model, tokens).to_transformerlens()
    ablated = run_with_cache(iv.ablate_neurons(model, {0: [3, 70]}), tokens).to_transformerlens()
    post = ablated["blocks.0.mlp.hook_post"]
    np.testing.assert_array_equal(post[..., [3, 70]], 0.0)
    w_proj = np.asarray(params["block_0"]["mlp"]["proj"]["kernel"])
    removed = np.einsum(
        "btn,nd->btd", clean["blocks.0.mlp.hook_post"][..., [3, 70]], w_proj[[3, 70]]
    )
    expected = clean["blocks.0.hook_mlp_out"] - removed
    np.testing.assert_allclose(ablated["blocks.0.hook_mlp_out"], expected, atol=1e-4)


def test_original_model_untouched(setup):
    _, _, model, tokens = setup
    before = np.asarray(run(model, tokens))
    edited = iv.ablate_heads(model, {0: [0, 1, 2, 3]})
    assert not np.allclose(run(edited, tokens), before, atol=1e-3)
    np.testing.assert_array_equal(run(model, tokens), before)
    assert pz.select(model).at_instances_of(iv.OverwriteActivation).count() == 0


def test_interventions_stack(setup):
    _, _, model, tokens = setup
    both = iv.ablate_neurons(iv.ablate_heads(model, {0: [0]}), {1: [5]})
    cache = run_with_cache(both, tokens).to_transformerlens()
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_z"][:, :, 0], 0.0)
    np.testing.assert_array_equal(cache["blocks.1.mlp.hook_post"][..., 5], 0.0)


def test_dropout_survives_interventions(setup):
    _, _, model, tokens = setup
    edited = iv.ablate_heads(disable_dropout(model), {0: [0]})
    assert pz.select(edited).at_instances_of(pz.nn.DisabledDropout).count() == 1 + 3 * 2
    restored = enable_dropout(edited)
    assert pz.select(restored).at_instances_of(pz.nn.StochasticDropout).count() == 1 + 3 * 2


def test_patch_whole_residual_restores_clean_logits(setup):
    _, _, model, tokens = setup
    corrupted = tokens.copy()
    corrupted[:, 3] = (corrupted[:, 3] + 1) % 37
    clean = run_with_cache(model, tokens, "blocks.1.hook_resid_pre")
    patched = iv.patch_activation(
        model, "blocks.1.hook_resid_pre", clean["blocks.1.hook_resid_pre"]
    )
    np.testing.assert_allclose(run(patched, corrupted), clean.logits, atol=1e-4)
    assert not np.allclose(run(model, corrupted), clean.logits, atol=1e-3)


def test_sweep_resid_pre_finds_corrupted_position(setup):
    _, _, model, tokens = setup
    corrupted = tokens.copy()
    corrupted[:, 2] = (corrupted[:, 2] + 5) % 37
    result = iv.patching_sweep(model, tokens, corrupted, answer=4, wrong=9)
    assert result.effect.named_shape == {"blocks": 2, "seq": 8}
    effect = np.asarray(result.effect.unwrap("blocks", "seq"))
    # At block 0, only position 2 differs: patching it gives the clean run back exactly.
    np.testing.assert_allclose(effect[0, 2], 1.0, atol=1e-3)
    np.testing.assert_allclose(np.delete(effect[0], 2), 0.0, atol=1e-3)
    assert result.labels["seq"] == [str(i) for i in range(8)]
    assert result.clean.shape == result.corrupted.shape == (2,)


def test_sweep_heads_shape_and_total(setup):
    _, _, model, tokens = setup
    corrupted = tokens.copy()
    corrupted[:, 5] = (corrupted[:, 5] + 3) % 37
    result = iv.patching_sweep(
        model, tokens, corrupted, 4, 9, hook="attn.hook_z", by_position=False
    )
    assert result.effect.named_shape == {"blocks": 2, "heads": 4}
    effect = np.asarray(result.effect.unwrap("blocks", "heads"))
    assert np.isfinite(effect).all()
    assert np.abs(effect).max() > 1e-3


def test_steering_vector_adds_to_residual(setup):
    config, _, model, tokens = setup
    vector = np.linspace(-1, 1, config.embedding_dim).astype(np.float32)
    name = "blocks.1.hook_resid_pre"
    clean = run_with_cache(model, tokens, name).to_transformerlens()[name]
    steered = iv.add_steering_vector(model, 1, vector, scale=2.0, positions=[0, 5])
    actual = run_with_cache(steered, tokens, name).to_transformerlens()[name]
    expected = clean.copy()
    expected[:, [0, 5]] += 2.0 * vector
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: iv.ablate_heads(m, {0: [4]}), "head index 4 is out of range for 4 heads"),
        (lambda m: iv.ablate_heads(m, {0: [0]}, "max"), "must be 'zero' or 'mean'"),
        (lambda m: iv.ablate_heads(m, {0: [0]}, "mean"), "needs reference_cache"),
        (lambda m: iv.ablate_neurons(m, {5: [0]}), "Unknown hook name 'blocks.5.mlp.hook_post'"),
        (lambda m: iv.add_steering_vector(m, 0, np.ones(3)), r"shape \[32\]"),
        (
            lambda m: iv.insert_before_hook(m, "blocks.*.hook_resid_pre", pz.nn.Identity()),
            "one exact hook name",
        ),
    ],
    ids=["head-range", "method", "mean-needs-cache", "layer", "steer-shape", "glob"],
)
def test_bad_intervention_rejected(setup, call, message):
    _, _, model, _ = setup
    with pytest.raises(ValueError, match=message):
        call(model)


def test_sweep_rejects_mismatched_prompts(setup):
    _, _, model, tokens = setup
    with pytest.raises(ValueError, match="same shape"):
        iv.patching_sweep(model, tokens, tokens[:, :5], 1, 2)
