"""Tests for the training loop, the `gpt2-twins train` command, settings and the sampler."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bridge import cli
from flax_gpt2 import checkpoint
from flax_gpt2.metrics import flops_per_token, read_metrics
from flax_gpt2.model import GPT2
from flax_gpt2.params import init_params
from flax_gpt2.sample import sample_tokens
from flax_gpt2.train import TrainSettings, train
from gpt2_spec import GPT2Config, preset

# A tiny model for library-level runs: 2 layers, 4 heads, width 32, context 16.
TINY = {"context_length": 16, "embedding_dim": 32, "num_layers": 2, "num_heads": 4}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def text_path(tmp_path_factory, corpus_path):
    path = tmp_path_factory.mktemp("data") / "shakespeare_slice.txt"
    path.write_text(corpus_path.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def _cli_args(text_path, out, *extra):
    return [
        "train", "--data", str(text_path), "--out", str(out), "--steps", "40",
        "--batch-size", "8", "--warmup-steps", "5", "--eval-interval", "20",
        "--eval-batches", "4", "--log-interval", "10", "--sample-chars", "40",
        "--peak-flops", "1e11", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_trains_and_writes_run(text_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_cli_args(text_path, out)) == 0
    assert "Trained to step 40" in capsys.readouterr().out

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    first = records[0]["loss"]
    last = np.mean([r["loss"] for r in records[-5:]])
    assert first == pytest.approx(np.log(65), abs=0.3)  # uniform over ~65 characters
    assert last < first - 0.5
    assert (out / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    assert len((out / "sample.txt").read_text(encoding="utf-8")) == 40

    loaded = checkpoint.load_run(out)
    assert loaded.step == 40
    assert loaded.config == preset("shakespeare-char", vocab_size=loaded.tokenizer.vocab_size)

    # The trained weights, not only random ones, give the same logits and greedy text in
    # both twins.
    assert cli.main(["parity", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    texts = {}
    for twin in ("flax", "penzai"):
        prompt = ["generate", str(out), "--twin", twin, "--prompt", "ROMEO:", "--temperature", "0"]
        assert cli.main([*prompt, "--max-new-tokens", "30"]) == 0
        texts[twin] = capsys.readouterr().out
    assert texts["flax"].startswith("ROMEO:")
    assert len(texts["flax"]) >= len("ROMEO:") + 30
    assert texts["flax"] == texts["penzai"]


@pytest.mark.slow
def test_cli_resume_keeps_saved_settings(text_path, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_cli_args(text_path, out, "--steps", "12", "--lr-decay-steps", "40")) == 0
    # Batch size 8, warmup 5 and the rest come from train_settings.json; the defaults
    # (batch 12) would not split over 8 devices.
    assert cli.main(["train", "--data", str(text_path), "--out", str(out), "--resume",
                     "--steps", "16"]) == 0  # fmt: skip

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 17))
    assert checkpoint.load_run(out).step == 16
    assert checkpoint.read_settings(out).batch_size == 8
    assert checkpoint.read_settings(out).steps == 16


def test_cli_refuses_existing_run(text_path, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert cli.main(_cli_args(text_path, out)) == 2
    assert "already contains a training run; pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "gpt2-tiny"], "Unknown preset 'gpt2-tiny'"),
        (["--mesh", "data=3"], "needs 3 devices but 8 are available"),
        (["--mesh", "rows=2"], "Invalid mesh entry 'rows=2'"),
        (["--batch-size", "12", "--mesh", "data=8"], "Batch size 12 is not divisible"),
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--warmup-steps", "50"], "warmup_steps=50 must be below"),
    ],
    ids=["unknown-preset", "mesh-product", "mesh-axis", "batch-split", "steps", "warmup"],
)
def test_cli_rejects_bad_options(text_path, tmp_path, capsys, extra, message):
    assert cli.main(_cli_args(text_path, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    error_lines = [
        line for line in err.splitlines() if line.startswith("gpt2-twins train: error: ")
    ]
    assert len(error_lines) == 1
    assert message in error_lines[0]


def test_cli_missing_data(tmp_path, capsys):
    args = _cli_args(tmp_path / "missing.txt", tmp_path / "run")
    assert cli.main(args) == 2
    assert "missing.txt' not found" in capsys.readouterr().err


def test_cli_resume_without_checkpoint(text_path, tmp_path, capsys):
    assert cli.main(_cli_args(text_path, tmp_path / "run", "--resume")) == 2
    assert "No checkpoint to resume in" in capsys.readouterr().err


def _settings(steps: int) -> TrainSettings:
    return TrainSettings(
        steps=steps,
        lr_decay_steps=8,
        batch_size=8,
        warmup_steps=2,
        eval_interval=4,
        eval_batches=2,
        log_interval=4,
        checkpoint_interval=100,
        peak_flops=1e11,
        sample_chars=0,
        mesh={"data": 4, "model": 2},
    )


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(text_path, tmp_path):
    straight = train(text_path, tmp_path / "straight", _settings(8), model_overrides=TINY)
    train(text_path, tmp_path / "split", _settings(4), model_overrides=TINY)
    resumed = train(text_path, tmp_path / "split", _settings(8), resume=True)

    want = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    got = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))
    for got_record, want_record in zip(got, want, strict=True):
        assert got_record["loss"] == pytest.approx(want_record["loss"], rel=1e-5)
        assert got_record["lr"] == pytest.approx(want_record["lr"], rel=1e-6)
    assert resumed.val_loss == pytest.approx(straight.val_loss, rel=1e-5)
    want_params = checkpoint.load_run(tmp_path / "straight").params
    got_params = checkpoint.load_run(tmp_path / "split").params
    for got_leaf, want_leaf in zip(
        jax.tree.leaves(got_params), jax.tree.leaves(want_params), strict=True
    ):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_overwrite_replaces_run(text_path, tmp_path):
    settings = _settings(4).replace(lr_decay_steps=None, mesh={})
    train(text_path, tmp_path / "run", settings, model_overrides=TINY)
    with pytest.raises(ValueError, match="already contains a training run"):
        train(text_path, tmp_path / "run", settings, model_overrides=TINY)
    result = train(text_path, tmp_path / "run", settings.replace(steps=3), overwrite=True,
                   model_overrides=TINY)  # fmt: skip
    assert result.step == 3
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoint.load_run(tmp_path / "run").step == 3


def test_settings_round_trip_and_errors():
    settings = TrainSettings(steps=300, mesh={"model": 2}, peak_flops=1e12)
    assert TrainSettings.from_json(settings.to_json()) == settings
    assert TrainSettings().decay_steps == 2000
    with pytest.raises(ValueError, match="Unknown train settings \\['epochs'\\]"):
        TrainSettings.from_json(json.dumps({"epochs": 3}))
    with pytest.raises(ValueError, match="Unknown mesh axes \\['rows'\\]"):
        TrainSettings(mesh={"rows": 2})
    with pytest.raises(ValueError, match="min_learning_rate=0.1 and learning_rate=0.01"):
        TrainSettings(learning_rate=0.01, min_learning_rate=0.1)
    with pytest.raises(ValueError, match="beta2 must be in \\[0, 1\\), got 1.0"):
        TrainSettings(beta2=1.0)


def test_flops_per_token_formula():
    config = preset("shakespeare-char")
    attention = 12 * 4 * 64 * 128
    assert flops_per_token(config) == 6 * config.num_parameters() + attention


def test_sampler_is_seeded_and_in_vocabulary():
    config = preset("shakespeare-char", vocab_size=11, **TINY)
    params = init_params(config, jax.random.key(0))
    prompt = np.array([1, 2, 3], np.int32)
    first = sample_tokens(config, params, prompt, 40, seed=3)
    again = sample_tokens(config, params, prompt, 40, seed=3)
    other = sample_tokens(config, params, prompt, 40, seed=4)
    assert first.shape == (40,)
    assert first.min() >= 0
    assert first.max() < 11
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_sampler_top_k_one_is_greedy():
    config = GPT2Config(vocab_size=11, **TINY)
    params = init_params(config, jax.random.key(1))
    ids = sample_tokens(config, params, np.array([4]), 3, top_k=1)
    window = np.array([[4]], np.int32)
    forward = jax.jit(lambda p, w: GPT2(config).apply({"params": p}, w))
    for token in ids:
        logits = forward(params, window)
        assert token == int(np.argmax(logits[0, -1]))
        window = np.concatenate([window, [[token]]], axis=1)


def test_sampler_rejects_bad_prompt():
    config = GPT2Config(vocab_size=11, **TINY)
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="Token id 11 .* outside"):
        sample_tokens(config, params, np.array([11]), 5)
    with pytest.raises(ValueError, match="17 tokens but the model's context length is 16"):
        sample_tokens(config, params, np.zeros(17, np.int32), 5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        sample_tokens(config, params, np.array([1]), 5, temperature=0.0)
