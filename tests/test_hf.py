"""Hugging Face GPT-2 folders: config mapping, weight layout, tokenizers and bad files."""

import json
import re

import jax
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from bridge.cli import main
from bridge.hf import load_hf_source, params_to_hf, save_hf
from bridge.hf_config import config_from_hf, config_to_hf
from bridge.sources import load_model_source
from bridge.tokenizers import BPETokenizer
from flax_gpt2.params import init_params
from gpt2_spec import CharTokenizer, GPT2Config

TINY = GPT2Config(vocab_size=37, context_length=16, embedding_dim=32, num_layers=2, num_heads=4)


def hf_values(**changes):
    values = config_to_hf(TINY, eos_id=36)
    values.update(changes)
    return values


def flat_leaves(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def train_bpe(vocab_size=60) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    lines = ["the king is dead", "long live the king", "the queen is here", "live and let live"]
    backend.train_from_iterator(lines, trainer)
    return backend


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0))


@pytest.fixture
def hf_dir(tmp_path, params):
    return save_hf(tmp_path / "hf", TINY, params, eos_id=36)


# --- config mapping ---------------------------------------------------------------------


def test_config_maps_every_field():
    values = hf_values(
        n_inner=64, layer_norm_epsilon=1e-6, embd_pdrop=0.1, attn_pdrop=0.2, resid_pdrop=0.3
    )
    config = config_from_hf(values)
    assert config.vocab_size == 37
    assert config.context_length == 16
    assert config.embedding_dim == 32
    assert config.num_layers == 2
    assert config.num_heads == 4
    assert config.mlp_hidden_dim == 64
    assert config.layer_norm_epsilon == 1e-6
    assert config.embedding_dropout == 0.1
    assert config.attention_dropout == 0.2
    assert config.residual_dropout == 0.3


@pytest.mark.parametrize("n_inner", [None, "absent"])
def test_config_n_inner_defaults_to_4x(n_inner):
    values = hf_values(n_inner=n_inner)
    if n_inner == "absent":
        del values["n_inner"]
    assert config_from_hf(values).mlp_hidden_dim == 4 * 32


def test_config_accepts_harmless_keys():
    values = hf_values(
        pad_token_id=None,
        _name_or_path="somewhere",
        transformers_version="5.25.0",
        summary_type="cls_index",
        initializer_range=0.02,
        use_cache=True,
        activation_function="gelu_pytorch_tanh",
        n_ctx=16,
        task_specific_params={"text-generation": {"do_sample": True}},
        output_past=True,
        max_length=20,
        do_sample=False,
        pruned_heads={},
    )
    assert config_from_hf(values) == TINY


REJECTED = {
    "inverse-layer-idx": ("scale_attn_by_inverse_layer_idx", True),
    "reorder-upcast": ("reorder_and_upcast_attn", True),
    "no-scale": ("scale_attn_weights", False),
    "relu": ("activation_function", "relu"),
    "exact-gelu": ("activation_function", "gelu"),
    "cross-attention": ("add_cross_attention", True),
    "model-type": ("model_type", "gpt_neo"),
    "pruned-heads": ("pruned_heads", {"0": [1]}),
}


@pytest.mark.parametrize("case", REJECTED)
def test_config_rejects_unsupported(case):
    key, value = REJECTED[case]
    with pytest.raises(ValueError, match=rf"{key}={re.escape(repr(value))} is not supported"):
        config_from_hf(hf_values(**{key: value}))


def test_config_rejects_unknown_key():
    with pytest.raises(ValueError, match=r"unknown GPT-2 config keys \['rotary_dim'\]"):
        config_from_hf(hf_values(rotary_dim=8))


def test_config_rejects_missing_key():
    values = hf_values()
    del values["n_head"]
    with pytest.raises(ValueError, match=r"missing key 'n_head' \(maps to GPT2Config.num_heads\)"):
        config_from_hf(values)


def test_config_rejects_invalid_value():
    with pytest.raises(ValueError, match="embedding_dim=32 is not divisible by num_heads=5"):
        config_from_hf(hf_values(n_head=5))


def test_export_rejects_p_rope(tmp_path, params):
    config = TINY.replace(position_encoding="p-rope", rope_fraction=0.5)
    with pytest.raises(ValueError, match="'p-rope' has no Hugging Face GPT-2 equivalent"):
        save_hf(tmp_path / "out", config, init_params(config, jax.random.key(1)))
    assert not (tmp_path / "out").exists()


# --- weights -----------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path, params, hf_dir):
    first = load_hf_source(hf_dir)
    again = load_hf_source(save_hf(tmp_path / "again", first.config, first.params, eos_id=36))
    before, after = flat_leaves(params), flat_leaves(again.params)
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert value.tobytes() == after[name].tobytes(), name
    assert again.config == TINY
    assert again.eos_id == 36
    assert again.kind == "hf"


def test_load_model_source_finds_hf_folder(hf_dir):
    source = load_model_source(hf_dir)
    assert source.kind == "hf"
    assert source.tokenizer is None


def test_c_attn_columns_are_q_k_v(params):
    tensors = params_to_hf(params, TINY)
    fused = tensors["transformer.h.1.attn.c_attn.weight"]
    assert fused.shape == (32, 96)
    key_kernel = np.asarray(params["block_1"]["attn"]["key"]["kernel"])  # [d, heads, p]
    # Columns 32..63 are the keys, head 2's columns are 32 + 2 * 8 .. 32 + 3 * 8.
    np.testing.assert_array_equal(fused[:, 48:56], key_kernel[:, 2, :])


def test_bare_key_names_load(tmp_path, params, hf_dir):
    tensors = safetensors.numpy.load_file(str(hf_dir / "model.safetensors"))
    bare = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    safetensors.numpy.save_file(bare, str(hf_dir / "model.safetensors"))
    loaded = load_hf_source(hf_dir)
    np.testing.assert_array_equal(loaded.params["ln_f"]["bias"], params["ln_f"]["bias"])


def test_causal_mask_buffers_are_skipped(hf_dir, params):
    """Older transformers versions saved `attn.bias` and `attn.masked_bias` buffers."""
    mask = np.tril(np.ones((16, 16), np.float32))[None, None]

    def add_buffers(tensors):
        for i in range(2):
            tensors[f"h.{i}.attn.bias"] = mask
            tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)

    rewrite_tensors(hf_dir, add_buffers)
    loaded = load_hf_source(hf_dir)
    np.testing.assert_array_equal(
        loaded.params["block_1"]["attn"]["query"]["bias"],
        params["block_1"]["attn"]["query"]["bias"],
    )


def rewrite_tensors(folder, change):
    path = folder / "model.safetensors"
    tensors = dict(safetensors.numpy.load_file(str(path)))
    change(tensors)
    safetensors.numpy.save_file(tensors, str(path))


def test_tied_lm_head_copy_is_accepted(hf_dir):
    rewrite_tensors(
        hf_dir, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].copy()})
    )
    assert load_hf_source(hf_dir).config == TINY


def test_untied_lm_head_is_rejected(hf_dir):
    def untie(tensors):
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0

    rewrite_tensors(hf_dir, untie)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_hf_source(hf_dir)


def test_untied_config_without_head_is_rejected(hf_dir):
    values = json.loads((hf_dir / "config.json").read_text())
    values["tie_word_embeddings"] = False
    (hf_dir / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="tie_word_embeddings=false"):
        load_hf_source(hf_dir)


def test_missing_tensor_is_named(hf_dir):
    rewrite_tensors(hf_dir, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor 'h.1.mlp.c_fc.bias'"):
        load_hf_source(hf_dir)


def test_wrong_shape_is_named(hf_dir):
    values = json.loads((hf_dir / "config.json").read_text())
    values["n_positions"] = 32
    (hf_dir / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"'wpe.weight' has shape \(16, 32\).*\(32, 32\)"):
        load_hf_source(hf_dir)


def test_extra_layer_is_rejected(hf_dir):
    values = json.loads((hf_dir / "config.json").read_text())
    values["n_layer"] = 1
    (hf_dir / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"unexpected tensors \['h.1.attn.c_attn.bias'"):
        load_hf_source(hf_dir)


def test_truncated_safetensors_is_named(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        load_hf_source(hf_dir)


def test_bad_json_is_named(hf_dir):
    (hf_dir / "config.json").write_text('{"n_embd": 32,')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_hf_source(hf_dir)


def test_missing_weights_file(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors not found"):
        load_hf_source(hf_dir)


def test_bad_eos_id_is_rejected(hf_dir):
    values = json.loads((hf_dir / "config.json").read_text())
    values["eos_token_id"] = 37
    (hf_dir / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"eos_token_id=37 is not a token id in \[0, 37\)"):
        load_hf_source(hf_dir)


def test_export_refuses_non_empty_folder(hf_dir, params):
    with pytest.raises(ValueError, match="already exists and is not empty"):
        save_hf(hf_dir, TINY, params)


# --- tokenizers --------------------------------------------------------------------------


def test_bpe_tokenizer_round_trip(tmp_path):
    train_bpe().save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    ids = tokenizer.encode("the king lives")
    assert ids.dtype == np.int32
    assert len(ids) < len("the king lives")  # merges were learned
    assert tokenizer.decode(ids) == "the king lives"
    assert tokenizer.vocab_size <= 60


def test_bpe_encode_rejects_unknown_character(tmp_path):
    train_bpe().save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"Character ',' at position 8 is not in the BPE"):
        tokenizer.encode("the king, lives")


def test_bpe_decode_rejects_bad_id(tmp_path):
    train_bpe().save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=rf"Token id 999 is outside \[0, {tokenizer.vocab_size}\)"):
        tokenizer.decode([1, 999])


def test_bpe_corrupt_file_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match=r"tokenizer.json is not a valid tokenizer.json"):
        BPETokenizer.from_file(tmp_path / "tokenizer.json")


def test_bpe_tokenizer_travels_with_export(tmp_path):
    train_bpe().save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    config = TINY.replace(vocab_size=tokenizer.vocab_size)
    params = init_params(config, jax.random.key(2))
    folder = save_hf(tmp_path / "hf", config, params, tokenizer=tokenizer)
    loaded = load_hf_source(folder)
    assert isinstance(loaded.tokenizer, BPETokenizer)
    np.testing.assert_array_equal(
        loaded.tokenizer.encode("live king"), tokenizer.encode("live king")
    )


def test_char_tokenizer_travels_with_export(tmp_path, params):
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ,.!?ABCDE"))
    folder = save_hf(tmp_path / "hf", TINY, params, tokenizer=tokenizer)
    assert (folder / "char_tokenizer.json").is_file()
    assert not (folder / "tokenizer.json").exists()
    loaded = load_hf_source(folder)
    assert isinstance(loaded.tokenizer, CharTokenizer)
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("hello, world!")) == "hello, world!"


def test_tokenizer_larger_than_model_is_rejected(tmp_path, params):
    train_bpe(vocab_size=60).save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    assert tokenizer.vocab_size > TINY.vocab_size
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model has only 37"):
        save_hf(tmp_path / "hf", TINY, params, tokenizer=tokenizer)
    folder = save_hf(tmp_path / "hf", TINY, params)
    tokenizer.save(folder / "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model has only 37"):
        load_hf_source(folder)


# --- command line ------------------------------------------------------------------------


def write_run(directory, config, params, tokenizer):
    """A run directory as training writes it, with a fresh optimizer state."""
    from flax_gpt2 import checkpoint
    from flax_gpt2.settings import TrainSettings
    from flax_gpt2.train_step import make_optimizer

    validation = np.arange(40, dtype=np.int32) % config.vocab_size
    checkpoint.write_run_files(directory, config, tokenizer, TrainSettings(), validation)
    with checkpoint.checkpoint_manager(directory) as manager:
        opt_state = make_optimizer(TrainSettings()).init(params)
        checkpoint.save_run(manager, 3, params, opt_state, {})
    return directory


CHARS = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ,.!?ABCDE"))


def test_cli_export_hf_folder(hf_fixture_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export-hf", str(hf_fixture_dir), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    before = flat_leaves(load_hf_source(hf_fixture_dir).params)
    after = flat_leaves(load_hf_source(out).params)
    for name, value in before.items():
        assert value.tobytes() == after[name].tobytes(), name


@pytest.mark.slow
def test_cli_run_round_trip(tmp_path, params, capsys):
    run = write_run(tmp_path / "run", TINY, params, CHARS)
    hf = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(hf)]) == 0
    assert (hf / "char_tokenizer.json").is_file()
    imported = tmp_path / "imported"
    assert main(["import-hf", str(hf), "--out", str(imported)]) == 0
    again = load_model_source(imported)
    assert again.kind == "run"
    assert again.config == TINY
    assert again.tokenizer.decode(again.tokenizer.encode("hello, world")) == "hello, world"
    before, after = flat_leaves(params), flat_leaves(again.params)
    for name, value in before.items():
        assert value.tobytes() == after[name].tobytes(), name


@pytest.mark.slow
def test_cli_export_rejects_p_rope_run(tmp_path, capsys):
    config = TINY.replace(position_encoding="p-rope", rope_fraction=0.5)
    run = write_run(tmp_path / "run", config, init_params(config, jax.random.key(3)), CHARS)
    assert main(["export-hf", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "'p-rope' has no Hugging Face GPT-2 equivalent" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_cli_import_without_tokenizer(hf_fixture_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["import-hf", str(hf_fixture_dir), "--out", str(run)]) == 0
    imported = load_model_source(run)
    assert imported.kind == "run"
    assert imported.tokenizer is None
    before = flat_leaves(load_hf_source(hf_fixture_dir).params)
    after = flat_leaves(imported.params)
    for name, value in before.items():
        assert value.tobytes() == after[name].tobytes(), name


def test_cli_import_bpe_folder(tmp_path):
    train_bpe().save(str(tmp_path / "tokenizer.json"))
    tokenizer = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    config = TINY.replace(vocab_size=tokenizer.vocab_size)
    folder = save_hf(tmp_path / "hf", config, init_params(config, jax.random.key(4)), tokenizer)
    run = tmp_path / "run"
    assert main(["import-hf", str(folder), "--out", str(run)]) == 0
    imported = load_model_source(run)
    assert isinstance(imported.tokenizer, BPETokenizer)
    np.testing.assert_array_equal(
        imported.tokenizer.encode("live king"), tokenizer.encode("live king")
    )


def test_hf_folder_without_weights_is_named(hf_dir, capsys):
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"not read")
    assert main(["parity", str(hf_dir)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors not found" in err
    assert "only safetensors is read" in err
