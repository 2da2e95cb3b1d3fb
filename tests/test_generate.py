"""Generation with both twins: Hugging Face reference ids, twin agreement, cache, batches, EOS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridge import decode_loop
from bridge.convert import flax_to_penzai
from bridge.decode_steps import make_twin, positions_from_mask
from bridge.generate import GenerationSettings, bucket_size, generate, left_pad
from bridge.hf import load_hf_source
from flax_gpt2.model import GPT2
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import forward as penzai_forward

TWINS = ["flax", "penzai"]
CONFIG = GPT2Config(
    vocab_size=37,
    context_length=16,
    embedding_dim=32,
    num_layers=2,
    num_heads=4,
    embedding_dropout=0.1,
    attention_dropout=0.1,
    residual_dropout=0.1,
)
# Most tests use batches of 2 prompts of 2-8 tokens and 8 new tokens, so they share one
# compiled loop per twin (prompt bucket 8, new-token bucket 8).
GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)


@functools.cache
def random_params(seed: int, config: GPT2Config = CONFIG):
    """Parameters drawn from normal(0, 1): much wider than GPT-2's init, so greedy tokens vary."""
    params = init_params(config, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
    noisy = [jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, noisy)


@functools.cache
def twin(kind: str, seed: int):
    return make_twin(kind, random_params(seed), CONFIG)


def random_prompts(rng, lengths, config: GPT2Config = CONFIG):
    return [rng.integers(0, config.vocab_size, length) for length in lengths]


# --- Hugging Face fixture -------------------------------------------------------------


def load_hf_fixture(folder):
    """Load the fixture checkpoint with the project's Hugging Face importer."""
    source = load_hf_source(folder)
    return source.config, source.params


@pytest.fixture(scope="module")
def hf_model(hf_fixture_dir):
    config, params = load_hf_fixture(hf_fixture_dir)
    return config, params, np.load(hf_fixture_dir / "generate.npz")


@pytest.mark.parametrize("kind", TWINS)
def test_hf_greedy_single_prompt(kind, hf_model):
    config, params, reference = hf_model
    expected = reference["single_new_ids"]
    settings = GenerationSettings(max_new_tokens=expected.shape[1], temperature=0.0)
    result = generate(
        make_twin(kind, params, config),
        [reference["single_prompt_ids"][0]],
        settings,
        eos_id=int(reference["eos_token_id"]),
    )
    np.testing.assert_array_equal(result.tokens, expected)


@pytest.mark.parametrize("kind", TWINS)
def test_hf_greedy_left_padded_batch(kind, hf_model):
    config, params, reference = hf_model
    mask = reference["batch_attention_mask"].astype(bool)
    prompts = [
        row[row_mask] for row, row_mask in zip(reference["batch_prompt_ids"], mask, strict=True)
    ]
    assert [len(p) for p in prompts] == reference["batch_prompt_lengths"].tolist()
    expected = reference["batch_new_ids"]
    settings = GenerationSettings(max_new_tokens=expected.shape[1], temperature=0.0)
    result = generate(
        make_twin(kind, params, config),
        prompts,
        settings,
        eos_id=int(reference["eos_token_id"]),
    )
    np.testing.assert_array_equal(result.tokens, expected)
    np.testing.assert_array_equal(result.lengths, [expected.shape[1]] * 2)


# --- Twins agree ------------------------------------------------------------------------


def test_twins_same_greedy_tokens(rng):
    prompts = random_prompts(rng, [7, 2])
    flax_result = generate(twin("flax", 1), prompts, GREEDY)
    penzai_result = generate(twin("penzai", 1), prompts, GREEDY)
    assert len(np.unique(flax_result.tokens)) > 3  # the weights give varied tokens
    np.testing.assert_array_equal(flax_result.tokens, penzai_result.tokens)


def test_twins_same_sampled_tokens(rng):
    prompts = random_prompts(rng, [4, 6])
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_k=12, top_p=0.9, seed=7)
    flax_result = generate(twin("flax", 2), prompts, settings)
    penzai_result = generate(twin("penzai", 2), prompts, settings)
    np.testing.assert_array_equal(flax_result.tokens, penzai_result.tokens)


@pytest.mark.parametrize("kind", TWINS)
def test_seed_reproduces_and_varies(kind, rng):
    model = twin(kind, 3)
    prompts = random_prompts(rng, [3, 5])

    def sample(seed):
        settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=seed)
        return generate(model, prompts, settings).tokens

    np.testing.assert_array_equal(sample(11), sample(11))
    assert not np.array_equal(sample(11), sample(12))


# --- Cache, batches, compilation ----------------------------------------------------------


def uncached_forward(kind, params):
    """Full recomputation over the whole sequence without a cache: (tokens, mask) -> logits."""
    if kind == "flax":
        apply = jax.jit(lambda t, q: GPT2(CONFIG).apply({"params": params}, t, q))
    else:
        model = remove_dropout(flax_to_penzai(params, CONFIG))
        apply = jax.jit(lambda t, q: penzai_forward(model, t, q))
    return lambda tokens, mask: apply(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)))


@pytest.mark.parametrize("kind", TWINS)
def test_cached_steps_match_recomputation(kind, rng):
    params = random_params(4)
    model = make_twin(kind, params, CONFIG)
    steps, width = 6, 5
    prompt_ids, prompt_mask = left_pad(random_prompts(rng, [5, 3]), width)
    # The recomputation covers every token so far, right-padded to one fixed width (padding
    # after the last real token changes nothing under the causal mask).
    tokens = np.zeros((2, width + steps), np.int32)
    mask = np.zeros((2, width + steps), bool)
    tokens[:, :width], mask[:, :width] = prompt_ids, prompt_mask
    step = jax.jit(model.step.__call__)
    recompute = uncached_forward(kind, params)
    state = model.step.init_state(model.weights, 2, width + steps)
    logits, state = step(model.weights, state, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask))
    for index in range(steps):
        expected = recompute(tokens, mask)[:, width + index - 1]
        scale = max(1.0, float(jnp.abs(expected).max()))
        np.testing.assert_allclose(logits[:, -1], expected, rtol=0, atol=1e-5 * scale)
        next_token = np.asarray(jnp.argmax(expected, axis=-1), np.int32)
        tokens[:, width + index], mask[:, width + index] = next_token, True
        new_mask = jnp.ones((2, 1), bool)
        logits, state = step(model.weights, state, jnp.asarray(next_token[:, None]), new_mask)
    prompts = [prompt_ids[0], prompt_ids[1, 2:]]
    result = generate(model, prompts, GenerationSettings(max_new_tokens=steps, temperature=0.0))
    np.testing.assert_array_equal(result.tokens, tokens[:, width:])


@pytest.mark.parametrize("kind", TWINS)
def test_batch_row_equals_alone(kind, rng):
    model = twin(kind, 5)
    # Alone, the 1-token prompt has no padding; in the batch it has 7 padding tokens.
    prompts = random_prompts(rng, [6, 1])
    batch = generate(model, prompts, GREEDY)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], GREEDY)
        np.testing.assert_array_equal(batch.tokens[row], alone.tokens[0])


@pytest.mark.parametrize("kind", TWINS)
def test_token_zero_is_not_padding(kind):
    model = twin(kind, 6)
    result = generate(model, [np.array([0, 0, 5, 9, 3, 1]), np.array([5, 9, 3, 1])], GREEDY)
    assert not np.array_equal(result.tokens[0], result.tokens[1])


@pytest.mark.parametrize("kind", TWINS)
def test_second_call_does_not_trace(kind, rng):
    model = twin(kind, 7)
    generate(model, random_prompts(rng, [5, 3]), GREEDY)
    traced = decode_loop.trace_count
    # Same batch size and buckets (prompt 8, new tokens 8); every setting may change.
    settings = GenerationSettings(max_new_tokens=7, temperature=0.7, top_k=5, top_p=0.8, seed=3)
    generate(model, random_prompts(rng, [6, 8]), settings, eos_id=4)
    generate(make_twin(kind, random_params(8), CONFIG), random_prompts(rng, [7, 5]), GREEDY)
    assert decode_loop.trace_count == traced
    generate(model, random_prompts(rng, [5, 3, 2, 1, 4]), GREEDY)  # a new batch size compiles
    assert decode_loop.trace_count == traced + 1


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert bucket_size(12, cap=12) == 12
    assert bucket_size(9, cap=12) == 12
    assert bucket_size(13, cap=12) == 16


# --- End of sequence --------------------------------------------------------------------


@pytest.mark.parametrize("kind", TWINS)
def test_eos_stops_only_its_row(kind, rng):
    model = twin(kind, 9)
    prompts = random_prompts(rng, [4, 6])
    free = generate(model, prompts, GREEDY).tokens
    # Stop at row 0's third token, chosen so that it is absent from row 1's tokens.
    candidates = [t for t in free[0, 1:] if t not in free[1] and t not in free[0, :1]]
    if not candidates:
        pytest.fail(f"no token of row 0 is absent from row 1 in {free.tolist()}; change seed")
    eos = int(candidates[0])
    stop = int(np.flatnonzero(free[0] == eos)[0])
    result = generate(model, prompts, GREEDY, eos_id=eos)
    np.testing.assert_array_equal(result.tokens[0, : stop + 1], free[0, : stop + 1])
    np.testing.assert_array_equal(result.tokens[0, stop + 1 :], eos)
    np.testing.assert_array_equal(result.tokens[1], free[1])
    assert result.lengths.tolist() == [stop + 1, GREEDY.max_new_tokens]
    assert result.finished.tolist() == [True, False]
    np.testing.assert_array_equal(result.sequences[0], free[0, : stop + 1])


@pytest.mark.parametrize("kind", TWINS)
def test_eos_in_prompt_does_not_stop(kind, rng):
    model = twin(kind, 10)
    prompt = random_prompts(rng, [5])[0]
    eos = int(prompt[2])
    free = generate(model, [prompt], GREEDY).tokens[0]
    result = generate(model, [prompt], GREEDY, eos_id=eos)
    first_eos = np.flatnonzero(free == eos)
    length = GREEDY.max_new_tokens if first_eos.size == 0 else int(first_eos[0]) + 1
    assert result.lengths.tolist() == [length]
    np.testing.assert_array_equal(result.sequences[0], free[:length])


def test_all_rows_finished_ends_loop():
    model = twin("flax", 11)
    prompt = np.array([3, 1, 4, 1, 5])
    first = int(generate(model, [prompt], GREEDY).tokens[0, 0])
    result = generate(model, [prompt, prompt], GREEDY, eos_id=first)
    assert result.lengths.tolist() == [1, 1]
    np.testing.assert_array_equal(result.tokens, first)


# --- Sampling rules through the whole loop -----------------------------------------------


@pytest.mark.parametrize("kind", TWINS)
def test_top_k_one_equals_greedy(kind, rng):
    model = twin(kind, 12)
    prompts = random_prompts(rng, [3, 6])
    greedy = generate(model, prompts, GREEDY).tokens
    top1 = generate(model, prompts, GenerationSettings(max_new_tokens=8, top_k=1, seed=5)).tokens
    np.testing.assert_array_equal(top1, greedy)


@pytest.mark.parametrize("kind", TWINS)
def test_tiny_top_p_keeps_argmax(kind, rng):
    model = twin(kind, 13)
    prompts = random_prompts(rng, [2, 5])
    greedy = generate(model, prompts, GREEDY).tokens
    settings = GenerationSettings(max_new_tokens=8, temperature=2.0, top_p=1e-6, seed=5)
    np.testing.assert_array_equal(generate(model, prompts, settings).tokens, greedy)


def test_streaming_callback_sees_every_token(rng):
    model = twin("flax", 14)
    prompts = random_prompts(rng, [4, 2])
    seen = []
    result = generate(
        model, prompts, GREEDY, on_tokens=lambda i, tokens, active: seen.append((i, tokens))
    )
    assert [index for index, _ in seen] == list(range(GREEDY.max_new_tokens))
    np.testing.assert_array_equal(np.stack([t for _, t in seen], axis=1), result.tokens)


# --- Sliding window -----------------------------------------------------------------------


def windowed_greedy(params, prompt, num_new):
    """Greedy decoding that recomputes each token from the last context_length tokens."""
    context = CONFIG.context_length
    tokens = list(prompt)
    apply = jax.jit(lambda t: GPT2(CONFIG).apply({"params": params}, t))
    for _ in range(num_new):
        window = tokens[-context:]
        # Right padding to the full context keeps one compiled shape; causal attention
        # keeps the padding from changing the logits at the window's last real token.
        padded = np.zeros((1, context), np.int32)
        padded[0, : len(window)] = window
        tokens.append(int(jnp.argmax(apply(padded)[0, len(window) - 1])))
    return np.asarray(tokens[len(prompt) :])


@pytest.mark.parametrize("kind", TWINS)
def test_sliding_window_matches_recomputation(kind, rng):
    params = random_params(15)
    model = make_twin(kind, params, CONFIG)
    prompts = random_prompts(rng, [10, 6])
    settings = GenerationSettings(max_new_tokens=20, temperature=0.0, sliding_window=True)
    result = generate(model, prompts, settings)
    for row, prompt in enumerate(prompts):
        np.testing.assert_array_equal(result.tokens[row], windowed_greedy(params, prompt, 20))


# --- Errors -------------------------------------------------------------------------------


def test_context_overflow_names_numbers_and_fix(rng):
    model = twin("penzai", 16)
    settings = GenerationSettings(max_new_tokens=10, temperature=0.0)
    with pytest.raises(
        ValueError, match=r"max_new_tokens is 10, 20 in all, but the context length is 16"
    ) as error:
        generate(model, random_prompts(rng, [10, 3]), settings)
    assert "maximum prompt length is 10 tokens" in str(error.value)
    assert "at most 6" in str(error.value)
    assert "--sliding-window" in str(error.value)


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([np.array([1, 37])], r"Token id 37 at index \(1,\) is outside the model's vocabulary"),
        ([np.array([-1, 2])], r"Token id -1 at index \(0,\)"),
        ([np.array([], np.int32)], r"prompt 0 is empty"),
        ([np.arange(17) % 5], r"prompt 0 has 17 tokens but the model's context length is 16"),
        ([], r"No prompts given"),
        ([np.ones((2, 2), np.int32)], r"Prompt 0 must be a 1-D id array, got shape \(2, 2\)"),
    ],
    ids=["id-too-large", "negative-id", "empty", "too-long", "no-prompts", "2d"],
)
def test_invalid_prompts_are_rejected(prompts, message):
    model = twin("penzai", 17)
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, GREEDY)


def test_float_ids_are_rejected():
    model = twin("penzai", 17)
    with pytest.raises(TypeError, match="Token ids must be integers, got dtype float64"):
        generate(model, [np.array([1.0, 2.0])], GREEDY)


def test_eos_outside_vocabulary_is_rejected():
    model = twin("penzai", 18)
    with pytest.raises(ValueError, match=r"eos_id 40 is outside the model's vocabulary \[0, 37\)"):
        generate(model, [np.array([1, 2])], GREEDY, eos_id=40)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(max_new_tokens=0), r"max_new_tokens must be a positive integer, got 0"),
        (dict(temperature=-0.5), r"temperature must be a number >= 0 .* got -0.5"),
        (dict(top_k=0), r"top_k must be a positive integer or None .* got 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\] or None .* got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\] or None .* got 1.5"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*31\), got -1"),
    ],
    ids=["no-tokens", "negative-temperature", "top-k-zero", "top-p-zero", "top-p-big", "seed"],
)
def test_invalid_settings_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**changes)


def test_unknown_twin_is_rejected():
    with pytest.raises(ValueError, match=r"Unknown twin 'jax'; choose 'flax' or 'penzai'"):
        make_twin("jax", random_params(19), CONFIG)
