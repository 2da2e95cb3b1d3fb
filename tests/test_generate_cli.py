"""`gpt2-twins generate` as a user runs it: Hugging Face ids, streamed text, errors."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from bridge.cli import main
from bridge.commands import generate as generate_command
from bridge.generate import GenerationSettings, generate_text
from bridge.sources import ModelSource
from flax_gpt2.params import init_params
from gpt2_spec import CharTokenizer, GPT2Config

ALPHABET = "\n abcdefgh"


@pytest.fixture(scope="module")
def char_source() -> ModelSource:
    """A small character model with random weights, standing in for a training run."""
    tokenizer = CharTokenizer(sorted(ALPHABET))
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        context_length=16,
        embedding_dim=32,
        num_layers=2,
        num_heads=4,
    )
    params = init_params(config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves, strict=True)]
    )
    return ModelSource(
        config=config,
        params=params,
        tokenizer=tokenizer,
        eos_id=None,
        path=Path("char-run"),
        kind="run",
    )


@pytest.fixture
def run_dir(char_source, monkeypatch) -> str:
    """Make `gpt2-twins generate char-run` load `char_source`."""

    def load(path):
        if str(path) != "char-run":
            raise AssertionError(f"unexpected model path {path}")
        return char_source

    monkeypatch.setattr(generate_command, "load_model_source", load)
    return "char-run"


def test_hf_folder_greedy_ids(hf_fixture_dir, capsys):
    folder = str(hf_fixture_dir)
    reference = np.load(hf_fixture_dir / "generate.npz")
    prompt = ",".join(str(i) for i in reference["single_prompt_ids"][0])
    code = main(
        ["generate", folder, "--prompt-ids", prompt, "--temperature", "0", "--max-new-tokens", "20"]
    )
    assert code == 0
    expected = ",".join(str(i) for i in reference["single_new_ids"][0])
    assert capsys.readouterr().out == expected + "\n"


def test_hf_folder_batch_penzai(hf_fixture_dir, capsys):
    folder = str(hf_fixture_dir)
    reference = np.load(hf_fixture_dir / "generate.npz")
    mask = reference["batch_attention_mask"].astype(bool)
    args = ["generate", folder, "--twin", "penzai", "--temperature", "0", "--max-new-tokens", "20"]
    for row, row_mask in zip(reference["batch_prompt_ids"], mask, strict=True):
        args += ["--prompt-ids", ",".join(str(i) for i in row[row_mask])]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [",".join(str(i) for i in row) for row in reference["batch_new_ids"]]
    assert lines == expected


def test_streamed_text_matches_library(run_dir, char_source, capsys):
    code = main(
        [
            "generate",
            run_dir,
            "--twin",
            "penzai",
            "--prompt",
            "bad cafe",
            "--max-new-tokens",
            "6",
            "--seed",
            "3",
            "--top-k",
            "4",
        ]
    )
    assert code == 0
    settings = GenerationSettings(max_new_tokens=6, seed=3, top_k=4)
    [expected] = generate_text(char_source, ["bad cafe"], settings, twin="penzai")
    assert len(expected) == 6
    assert capsys.readouterr().out == "bad cafe" + expected + "\n"


def test_batch_text_and_ids(run_dir, capsys):
    common = [
        "generate",
        run_dir,
        "--prompt",
        "ab",
        "--prompt",
        "hg fed",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ]
    assert main(common) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].startswith("ab")
    assert len(blocks[0]) == 2 + 5
    assert blocks[1].startswith("hg fed")
    assert len(blocks[1].rstrip("\n")) == 6 + 5
    assert main([*common, "--format", "ids"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.splitlines()]
    assert [len(row) for row in rows] == [5, 5]


def test_default_fills_context(run_dir, capsys):
    args = ["generate", run_dir, "--twin", "penzai", "--prompt", "abc", "--format", "ids"]
    assert main(args) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert len(line.split(",")) == 16 - 3


def test_sliding_window_is_announced(run_dir, capsys):
    args = [
        "generate",
        run_dir,
        "--prompt",
        "abcdefgh",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    ]
    assert main(args) == 2
    assert "--sliding-window" in capsys.readouterr().err
    assert main([*args, "--sliding-window"]) == 0
    captured = capsys.readouterr()
    assert "Sliding window: tokens past the context length of 16" in captured.err
    assert len(captured.out) == len("abcdefgh") + 12 + 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "cab€"], r"Character '€' at position 3 of the prompt is not in"),
        (["--prompt-ids", "1,2,99"], r"Token id 99 at index \(2,\) is outside"),
        ([], r"No prompt given; pass --prompt TEXT or --prompt-ids"),
        (["--prompt", "ab", "--top-p", "0"], r"top_p must be in \(0, 1\]"),
        (
            ["--prompt", "ab", "--max-new-tokens", "4", "--eos-id", "10"],
            r"eos_id 10 is outside the model's vocabulary \[0, 10\)",
        ),
    ],
    ids=["unknown-character", "id-outside-vocabulary", "no-prompt", "top-p", "eos-id"],
)
def test_invalid_input_is_reported(run_dir, capsys, extra, message):
    assert main(["generate", run_dir, "--twin", "penzai", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2-twins generate: error: ")
    assert re.search(message, err)


def test_malformed_prompt_ids_are_rejected(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", run_dir, "--prompt-ids", "3,x"])
    assert exit_info.value.code == 2
    assert "invalid token ids '3,x'; expected comma-separated integers" in capsys.readouterr().err


def test_text_prompt_needs_a_tokenizer(hf_fixture_dir, capsys):
    folder = str(hf_fixture_dir)
    assert main(["generate", folder, "--prompt", "hello", "--format", "ids"]) == 2
    assert "has no tokenizer, so --prompt cannot be encoded" in capsys.readouterr().err
    assert main(["generate", folder, "--prompt-ids", "1,2", "--format", "text"]) == 2
    assert "has no tokenizer, so it cannot print text; use --format ids" in (
        capsys.readouterr().err
    )
