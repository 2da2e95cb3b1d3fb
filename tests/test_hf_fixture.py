"""Both twins against a Hugging Face GPT-2 checkpoint and the outputs HF computed with it.

Tolerances are the fixture's: atol = rtol = 1e-4 on logits and activations, 1e-5 on
attention probabilities. Hidden states use HF's meaning: [0] is wte + wpe, [i] the output
of block i - 1, and [L] the final LayerNorm applied to the last block's output.
"""

import numpy as np
import pytest
from penzai import pz
from penzai.toolshed.save_intermediates import SaveIntermediate

from bridge.convert import flax_to_penzai
from bridge.hf import load_hf_source
from bridge.parity import positions_from_mask
from flax_gpt2.model import GPT2
from penzai_gpt2.cache import run_with_cache
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import forward

ACTIVATION_TOL = dict(atol=1e-4, rtol=1e-4)
PATTERN_TOL = dict(atol=1e-5, rtol=1e-5)
INPUTS = ["b2", "full"]


@pytest.fixture(scope="module")
def source(hf_fixture_dir):
    return load_hf_source(hf_fixture_dir)


@pytest.fixture(scope="module")
def reference(hf_fixture_dir):
    with np.load(hf_fixture_dir / "forward.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def penzai_model(source):
    return remove_dropout(flax_to_penzai(source.params, source.config))


def flax_run(source, tokens, positions=None):
    """Return Flax logits and the intermediates of the hooks HF outputs correspond to."""
    hook_methods = {"hook_resid_pre", "hook_resid_post", "hook_pattern"}

    def keep(module, method_name):
        return method_name in hook_methods or (module.name == "ln_f" and method_name == "__call__")

    logits, state = GPT2(source.config).apply(
        {"params": source.params}, tokens, positions, capture_intermediates=keep
    )
    return logits, state["intermediates"]


def flax_hidden_states(intermediates, num_layers):
    states = [intermediates["block_0"]["hook_resid_pre"][0]]
    states += [intermediates[f"block_{i}"]["hook_resid_post"][0] for i in range(num_layers)]
    states[-1] = intermediates["ln_f"]["__call__"][0]  # HF's last entry is after ln_f
    return np.stack(states)


def penzai_hidden_states(model, tokens, num_layers):
    names = ["blocks.0.hook_resid_pre"]
    names += [f"blocks.{i}.hook_resid_post" for i in range(num_layers - 1)]
    names += [f"blocks.{i}.attn.hook_pattern" for i in range(num_layers)]
    cache = run_with_cache(model, tokens, names).to_transformerlens()
    # The cache stops before the final LayerNorm's scale and bias; save its full output.
    saving = (
        pz.select(model)
        .at_instances_of(pz.nn.LayerNorm)
        .pick_nth_selected(2 * num_layers)
        .apply(lambda layer: pz.nn.Sequential([layer, SaveIntermediate()]))
    )
    forward(saving, tokens)
    final = pz.select(saving).at_instances_of(SaveIntermediate).get_sequence()[0].saved.value
    states = [cache[name] for name in names[:num_layers]]
    states.append(np.asarray(final.unwrap("batch", "seq", "embedding")))
    patterns = [cache[name] for name in names[num_layers:]]
    return np.stack(states), np.stack(patterns)


@pytest.mark.parametrize("name", INPUTS)
def test_flax_logits(name, source, reference):
    logits, _ = flax_run(source, reference[f"{name}_input_ids"])
    np.testing.assert_allclose(logits, reference[f"{name}_logits"], **ACTIVATION_TOL)


@pytest.mark.parametrize("name", INPUTS)
def test_penzai_logits(name, penzai_model, reference):
    logits = pz.variable_jit(forward)(penzai_model, reference[f"{name}_input_ids"])
    np.testing.assert_allclose(logits, reference[f"{name}_logits"], **ACTIVATION_TOL)


@pytest.mark.parametrize("name", INPUTS)
def test_flax_hidden_states_and_patterns(name, source, reference):
    num_layers = source.config.num_layers
    _, intermediates = flax_run(source, reference[f"{name}_input_ids"])
    hidden = flax_hidden_states(intermediates, num_layers)
    assert hidden.shape == reference[f"{name}_hidden_states"].shape
    np.testing.assert_allclose(hidden, reference[f"{name}_hidden_states"], **ACTIVATION_TOL)
    last_block = intermediates[f"block_{num_layers - 1}"]["hook_resid_post"][0]
    np.testing.assert_allclose(last_block, reference[f"{name}_last_block_out"], **ACTIVATION_TOL)
    patterns = np.stack(
        [intermediates[f"block_{i}"]["attn"]["hook_pattern"][0] for i in range(num_layers)]
    )
    np.testing.assert_allclose(patterns, reference[f"{name}_attentions"], **PATTERN_TOL)


@pytest.mark.parametrize("name", INPUTS)
def test_penzai_hidden_states_and_patterns(name, source, penzai_model, reference):
    num_layers = source.config.num_layers
    hidden, patterns = penzai_hidden_states(
        penzai_model, reference[f"{name}_input_ids"], num_layers
    )
    assert hidden.shape == reference[f"{name}_hidden_states"].shape
    np.testing.assert_allclose(hidden, reference[f"{name}_hidden_states"], **ACTIVATION_TOL)
    np.testing.assert_allclose(patterns, reference[f"{name}_attentions"], **PATTERN_TOL)


def test_left_padded_batch_both_twins(source, penzai_model, reference):
    tokens, mask = reference["padded_input_ids"], reference["padded_attention_mask"]
    positions = positions_from_mask(mask)
    real = mask == 1
    assert (~real).sum() == 5
    expected = reference["padded_logits"][real]
    flax_logits, _ = flax_run(source, tokens, positions)
    penzai_logits = pz.variable_jit(forward)(penzai_model, tokens, positions)
    np.testing.assert_allclose(np.asarray(flax_logits)[real], expected, **ACTIVATION_TOL)
    np.testing.assert_allclose(np.asarray(penzai_logits)[real], expected, **ACTIVATION_TOL)


def test_fixture_config_and_eos(source):
    assert source.config.vocab_size == 65
    assert source.config.context_length == 64
    assert source.config.mlp_hidden_dim == 128
    assert source.eos_id == 64
