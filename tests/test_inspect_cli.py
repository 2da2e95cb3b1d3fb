"""`gpt2-twins inspect` and `bridge.inspect`: outputs, TransformerLens values, input errors."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import bridge.inspect as inspect_lib
from bridge.cli import main
from bridge.sources import ModelSource
from flax_gpt2.params import init_params
from gpt2_spec import CharTokenizer, GPT2Config


@pytest.fixture(scope="module")
def char_source() -> ModelSource:
    tokenizer = CharTokenizer(list(" !abcdefghijklmnopqrstuvwxyz"))
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        context_length=12,
        embedding_dim=16,
        num_layers=2,
        num_heads=2,
    )
    return ModelSource(
        config=config,
        params=init_params(config, jax.random.key(0)),
        tokenizer=tokenizer,
        eos_id=None,
        path=Path("char-model"),
        kind="run",
    )


@pytest.fixture
def use_char_source(monkeypatch, char_source):
    monkeypatch.setattr(inspect_lib, "load_model_source", lambda path: char_source)
    return char_source


def ids_argument(row) -> str:
    return ",".join(str(int(token)) for token in row)


def test_cli_save_matches_transformerlens(hf_fixture_dir, tmp_path, capsys):
    tokens = np.load(hf_fixture_dir / "forward.npz")["b2_input_ids"]
    reference = np.load(hf_fixture_dir / "transformerlens_cache.npz")
    argv = ["inspect", str(hf_fixture_dir), "--save", str(tmp_path / "cache.npz")]
    argv += ["--cache", "blocks.*.attn.hook_pattern", "blocks.1.attn.hook_q", "hook_embed"]
    for row in tokens:
        argv += ["--prompt-ids", ids_argument(row)]
    assert main(argv) == 0
    saved = np.load(tmp_path / "cache.npz")
    expected = [
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_q",
        "hook_embed",
    ]
    assert sorted(saved.files) == sorted([*expected, "input_ids", "logits"])
    assert saved["blocks.0.attn.hook_pattern"].shape == (2, 4, 16, 16)
    assert saved["blocks.1.attn.hook_q"].shape == (2, 16, 4, 8)
    np.testing.assert_array_equal(saved["input_ids"], tokens)
    for name in expected:
        tol = 1e-5 if "pattern" in name else 1e-4
        np.testing.assert_allclose(saved[name], reference[name], atol=tol, rtol=tol, err_msg=name)
    np.testing.assert_allclose(saved["logits"], reference["logits"], atol=1e-4, rtol=1e-4)
    output = capsys.readouterr().out
    assert "cached blocks.1.attn.hook_q [2, 16, 4, 8]" in output
    assert "wrote arrays:" in output


def test_cli_writes_attention_and_treescope(use_char_source, tmp_path, capsys):
    out, tree = tmp_path / "attention.html", tmp_path / "model.html"
    argv = ["inspect", "run", "--prompt", "to be!", "--out", str(out), "--treescope", str(tree)]
    assert main(argv) == 0
    page = out.read_text("utf-8")
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["tokens"] == [["t", "o", "\u2423", "b", "e", "!"]]
    assert (data["num_layers"], data["num_heads"]) == (2, 2)
    patterns = np.array(data["patterns"])
    assert patterns.shape == (1, 2, 2, 6, 6)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-3)
    assert "treescope-container" in tree.read_text("utf-8")
    output = capsys.readouterr().out
    assert "prompt 0: 'to be!' (6 tokens)" in output
    assert "next token (probability): '" in output
    assert "wrote attention:" in output
    assert "wrote treescope:" in output


def test_save_without_cache_saves_every_hook(use_char_source, tmp_path):
    path = tmp_path / "all.npz"
    assert main(["inspect", "run", "--prompt", "abc", "--save", str(path)]) == 0
    saved = np.load(path)
    assert len(saved.files) == 3 + 2 * 14 + 2
    assert saved["blocks.1.hook_resid_post"].shape == (1, 3, 16)


def test_library_returns_cache(char_source):
    tokens = inspect_lib.encode_prompts(char_source, prompt_ids=[[1, 2, 3], [4, 5, 6]])
    result = inspect_lib.inspect_source(char_source, tokens, cache=["blocks.0.mlp.hook_*"])
    assert sorted(result.arrays) == ["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre"]
    assert result.arrays["blocks.0.mlp.hook_post"].shape == (2, 3, 64)
    assert result.labels == [["!", "a", "b"], ["c", "d", "e"]]
    assert result.written == {}
    logits = np.asarray(result.cache.logits, np.float64)[1, -1]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    best = [token for token, _, _ in result.predictions[1]]
    assert best == list(np.argsort(-expected)[:5])
    assert result.predictions[1][0][1] == char_source.tokenizer.decode([best[0]])
    assert result.predictions[1][0][2] == pytest.approx(expected.max())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "hello?"], "Character '\\?' at position 5"),
        (["--prompt-ids", "1,2", "--prompt-ids", "3"], "different lengths"),
        (["--prompt-ids", "1,28"], "Token id 28 .* outside"),
        (["--prompt", "abcdefghijklm"], "13 tokens but the model's context length is 12"),
        (["--prompt", "ab", "--cache", "blocks.9.*"], "Unknown hook name 'blocks.9.\\*'"),
        (["--prompt", "ab", "--out", "/nonexistent/dir/a.html"], "folder /nonexistent/dir"),
    ],
    ids=["character", "lengths", "id-range", "too-long", "hook", "missing-folder"],
)
def test_cli_rejects_bad_input(use_char_source, capsys, argv, message):
    assert main(["inspect", "run", *argv]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error


def test_text_prompt_needs_tokenizer(char_source):
    source = ModelSource(
        config=char_source.config,
        params=char_source.params,
        tokenizer=None,
        eos_id=None,
        path=Path("ids-only"),
        kind="hf",
    )
    with pytest.raises(ValueError, match="has no tokenizer.*--prompt-ids"):
        inspect_lib.encode_prompts(source, prompt="abc")
    tokens = inspect_lib.encode_prompts(source, prompt_ids=[[3, 4]])
    assert inspect_lib.token_labels(source, tokens) == [["3", "4"]]


@pytest.mark.parametrize(
    "argv",
    [["--prompt-ids", "1,x"], ["--prompt", "a", "--prompt-ids", "1"], []],
    ids=["not-int", "both", "neither"],
)
def test_cli_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "run", *argv])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_missing_source(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing"), "--prompt-ids", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
