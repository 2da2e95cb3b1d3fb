"""An exported folder opens in `transformers.GPT2LMHeadModel` and computes our logits."""

import jax
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

torch = pytest.importorskip("torch", reason="torch is needed to run the Hugging Face model")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from bridge.hf import load_hf_source, save_hf  # noqa: E402
from bridge.parity import twin_logits  # noqa: E402
from bridge.tokenizers import BPETokenizer  # noqa: E402
from flax_gpt2.params import init_params  # noqa: E402
from gpt2_spec import GPT2Config  # noqa: E402

TINY = GPT2Config(
    vocab_size=37,
    context_length=16,
    embedding_dim=32,
    num_layers=2,
    num_heads=4,
    mlp_hidden_dim=48,
    layer_norm_epsilon=1e-6,
)


def hf_logits(folder, tokens, attention_mask=None, position_ids=None):
    model = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
            position_ids=None if position_ids is None else torch.as_tensor(position_ids),
        )
    return out.logits.numpy()


def perturbed_params(config, seed):
    """Random params with every LayerNorm and bias moved off 1 and 0, so a swap shows."""
    params = init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape), params)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    params = jax.tree.map(lambda x: x.astype(np.float32), perturbed_params(TINY, 0))
    return save_hf(tmp_path_factory.mktemp("export") / "hf", TINY, params, eos_id=3), params


def test_export_logits_match_transformers(exported, rng):
    folder, _ = exported
    tokens = rng.integers(0, TINY.vocab_size, (2, TINY.context_length), dtype=np.int32)
    expected = hf_logits(folder, tokens)
    flax_out, penzai_out = twin_logits(load_hf_source(folder), tokens)
    assert expected.shape == (2, 16, 37)
    np.testing.assert_allclose(flax_out, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(penzai_out, expected, atol=1e-4, rtol=0)


def test_export_config_reads_in_transformers(exported):
    folder, _ = exported
    config = transformers.GPT2Config.from_pretrained(str(folder))
    assert config.n_inner == 48
    assert config.layer_norm_epsilon == 1e-6
    assert config.eos_token_id == 3
    assert config.tie_word_embeddings


def test_export_weights_match_transformers_state(exported):
    folder, params = exported
    model = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    # The value columns of c_attn for head 3 are 2 * 32 + 3 * 8 ... 2 * 32 + 4 * 8.
    np.testing.assert_array_equal(
        state["transformer.h.0.attn.c_attn.weight"][:, 88:96],
        params["block_0"]["attn"]["value"]["kernel"][:, 3, :],
    )
    np.testing.assert_array_equal(state["lm_head.weight"], params["wte"]["embedding"])


def test_fixture_reexport_matches_transformers(hf_fixture_dir, tmp_path):
    source = load_hf_source(hf_fixture_dir)
    folder = save_hf(tmp_path / "hf", source.config, source.params, eos_id=source.eos_id)
    tokens = np.load(hf_fixture_dir / "forward.npz")["b2_input_ids"]
    np.testing.assert_allclose(
        hf_logits(folder, tokens), hf_logits(hf_fixture_dir, tokens), atol=0, rtol=0
    )


def test_left_padded_batch_matches_transformers(exported):
    folder, _ = exported
    tokens = np.array([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]], dtype=np.int32)
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], dtype=np.int64)
    hf_positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    expected = hf_logits(folder, tokens, mask, hf_positions)
    ours = np.where(mask == 1, np.cumsum(mask, -1) - 1, -1)
    flax_out, penzai_out = twin_logits(load_hf_source(folder), tokens, ours)
    real = mask == 1
    np.testing.assert_allclose(flax_out[real], expected[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(penzai_out[real], expected[real], atol=1e-4, rtol=0)


def test_bpe_tokenizer_reads_in_transformers(tmp_path):
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["to be or not to be", "that is the question"], trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    config = TINY.replace(vocab_size=tokenizer.vocab_size)
    folder = save_hf(tmp_path / "hf", config, init_params(config, jax.random.key(1)), tokenizer)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = "to be, that is. Ça va?"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).tolist()
    assert hf_tokenizer.decode(tokenizer.encode(text).tolist()) == text
