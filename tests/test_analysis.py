"""Analyses of cached runs: logit lens, decomposition, attribution, head scores."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from penzai import pz

from bridge.convert import flax_to_penzai
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2 import analysis
from penzai_gpt2.cache import run_with_cache


@pytest.fixture(scope="module", params=["learned", "p-rope"])
def setup(request):
    config = GPT2Config(
        vocab_size=37,
        context_length=16,
        embedding_dim=32,
        num_layers=2,
        num_heads=4,
        position_encoding=request.param,
    )
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 5.0 if x.ndim > 1 else x + 0.1, params)
    model = flax_to_penzai(params, config)
    tokens = np.random.default_rng(1).integers(0, 37, (2, 10), dtype=np.int32)
    return config, params, model, run_with_cache(model, tokens)


def test_logit_lens_last_layer_equals_logits(setup):
    _, _, model, cache = setup
    lens, labels = analysis.logit_lens(model, cache)
    assert labels == [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
    ]
    assert lens.named_shape == {"layer": 3, "batch": 2, "seq": 10, "vocabulary": 37}
    last = np.asarray(lens[{"layer": 2}].unwrap("batch", "seq", "vocabulary"))
    np.testing.assert_allclose(last, cache.logits, atol=1e-4, rtol=1e-5)
    first = np.asarray(lens[{"layer": 0}].unwrap("batch", "seq", "vocabulary"))
    assert not np.allclose(first, cache.logits, atol=1e-2)


def test_logit_lens_recomputes_layer_norm(setup):
    _, params, model, cache = setup
    lens, _ = analysis.logit_lens(model, cache, include_mid=True)
    resid = cache.to_transformerlens()["blocks.0.hook_resid_mid"]
    # Independent NumPy LayerNorm + tied unembedding of the same residual.
    normalized = (resid - resid.mean(-1, keepdims=True)) / np.sqrt(
        resid.var(-1, keepdims=True) + 1e-5
    )
    ln_f = params["ln_f"]
    expected = (normalized * ln_f["scale"] + ln_f["bias"]) @ np.asarray(
        params["wte"]["embedding"]
    ).T
    actual = lens[{"layer": 1}].unwrap("batch", "seq", "vocabulary")
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_decomposition_sums_to_final_residual(setup):
    config, _, model, cache = setup
    terms, labels = analysis.decompose_residual(model, cache)
    learned = config.position_encoding == "learned"
    assert labels[: 2 if learned else 1] == (
        ["hook_embed", "hook_pos_embed"] if learned else ["hook_embed"]
    )
    assert len(labels) == (2 if learned else 1) + 2 * config.num_layers
    total = np.asarray(terms.untag("component").sum().unwrap("batch", "seq", "embedding"))
    expected = cache.to_transformerlens()["blocks.1.hook_resid_post"]
    np.testing.assert_allclose(total, expected, atol=1e-4, rtol=1e-5)


def test_head_results_plus_bias_equal_attn_out(setup):
    _, params, model, cache = setup
    for layer in range(2):
        results = analysis.head_results(model, cache, layer)
        summed = np.asarray(results.untag("heads").sum().unwrap("batch", "seq", "embedding"))
        bias = np.asarray(params[f"block_{layer}"]["attn"]["out"]["bias"])
        expected = cache.to_transformerlens()[f"blocks.{layer}.hook_attn_out"]
        np.testing.assert_allclose(summed + bias, expected, atol=1e-4, rtol=1e-5)


def test_head_attribution_sums_to_attn_out_attribution(setup):
    _, _, model, cache = setup
    heads = analysis.head_attribution(model, cache, answer=3, wrong=7)
    assert heads.named_shape == {"blocks": 2, "batch": 2, "seq": 10, "heads": 4}
    direction = analysis.logit_direction(model, 3, 7)
    for layer in range(2):
        bias = analysis._parameter(model, f"block_{layer}/attn/out/AddBias.bias")
        bias_term = analysis.direct_logit_attribution(model, cache, bias, direction)
        whole = analysis.direct_logit_attribution(
            model, cache, cache[f"blocks.{layer}.hook_attn_out"], direction
        )
        per_head = heads[{"blocks": layer}].untag("heads").sum()
        total = pz.nx.nmap(lambda a, b: a + b)(per_head, bias_term)
        np.testing.assert_allclose(
            total.unwrap("batch", "seq"), whole.unwrap("batch", "seq"), atol=1e-4, rtol=1e-4
        )


def test_component_attributions_sum_to_logit_difference(setup):
    _, _, model, cache = setup
    terms, _ = analysis.decompose_residual(model, cache)
    direction = analysis.logit_direction(model, 5, 2)
    attributions = analysis.direct_logit_attribution(model, cache, terms, direction)
    total = np.asarray(attributions.untag("component").sum().unwrap("batch", "seq"))
    # ln_f's bias is the only part of the logit difference no component carries.
    bias = np.asarray(analysis._parameter(model, "ln_f/shift.bias").unwrap("embedding"))
    bias_part = bias @ np.asarray(direction.unwrap("embedding"))
    logits = np.asarray(cache.logits)
    np.testing.assert_allclose(total + bias_part, logits[..., 5] - logits[..., 2], atol=1e-4)


def test_scores_on_constructed_patterns():
    seq_len, total = 5, 10
    induction = np.zeros((2, total, total))
    previous = np.zeros((2, total, total))
    for t in range(total):
        previous[:, t, max(t - 1, 0)] = 1.0
        source = t - seq_len + 1 if t >= seq_len else t
        induction[:, t, source] = 1.0
    uniform = np.tril(np.ones((total, total))) / np.arange(1, total + 1)[:, None]
    assert analysis.induction_score(induction, seq_len) == pytest.approx(1.0)
    assert analysis.previous_token_score(previous) == pytest.approx(1.0)
    assert analysis.induction_score(previous, seq_len) == pytest.approx(0.0)
    expected_uniform = np.mean(1.0 / np.arange(seq_len + 1, total + 1))
    assert analysis.induction_score(uniform[None], seq_len) == pytest.approx(expected_uniform)


def test_head_scores_on_random_model(setup):
    config, _, model, _ = setup
    scores = analysis.head_scores(model, seq_len=8, batch=4)
    assert scores.induction.shape == scores.previous_token.shape == (2, 4)
    assert ((scores.induction >= 0) & (scores.induction <= 1)).all()
    assert ((scores.previous_token >= 0) & (scores.previous_token <= 1)).all()
    top = scores.top_heads("induction", 0.0)
    assert len(top) == 8
    assert top[0][2] == scores.induction.max()


def test_head_scores_reject_long_sequences(setup):
    config, _, model, _ = setup
    if config.position_encoding != "learned":
        pytest.skip("only a learned position table fixes the Penzai twin's context length")
    with pytest.raises(ValueError, match="context length is 16"):
        analysis.head_scores(model, seq_len=9)


def test_logit_direction_rejects_bad_token(setup):
    _, _, model, _ = setup
    with pytest.raises(ValueError, match="Token id 37 is outside the vocabulary"):
        analysis.logit_direction(model, 37)


SHAKESPEARE_RUN = Path(os.environ.get("GPT2_TWINS_SHAKESPEARE_RUN", "/tmp/runs/shakespeare"))


@pytest.mark.slow
def test_trained_model_has_previous_token_heads():
    if not SHAKESPEARE_RUN.exists():
        pytest.skip(f"no trained run at {SHAKESPEARE_RUN}; set GPT2_TWINS_SHAKESPEARE_RUN")
    from bridge.sources import load_model_source

    source = load_model_source(SHAKESPEARE_RUN)
    config = source.config
    seq_len = config.context_length // 2 - 1
    trained = analysis.head_scores(flax_to_penzai(source.params, config), seq_len, batch=16)
    untrained_model = flax_to_penzai(init_params(config, jax.random.key(0)), config)
    untrained = analysis.head_scores(untrained_model, seq_len, batch=16)
    for scores in (trained, untrained):
        assert scores.induction.shape == (config.num_layers, config.num_heads)
        assert scores.induction.min() >= 0.0
        assert scores.induction.max() <= 1.0
    # Training sharpens attention to the previous token well beyond a random model's.
    assert trained.previous_token.max() > 2 * untrained.previous_token.max()
