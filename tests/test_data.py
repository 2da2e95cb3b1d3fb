"""Tests for the character-level data pipeline: reading, splitting and batch sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flax_gpt2.data import BatchSampler, load_text_dataset, read_text


@pytest.fixture
def text_file(tmp_path, corpus_path):
    path = tmp_path / "slice.txt"
    path.write_text(corpus_path.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    return path


def test_read_text_missing_file(tmp_path):
    missing = tmp_path / "nothing.txt"
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt.*tiny-shakespeare"):
        read_text(missing)


def test_read_text_empty_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt.* is empty"):
        read_text(empty)


def test_read_text_not_utf8(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*not valid UTF-8"):
        read_text(latin)


def test_split_is_first_ninety_percent(text_file):
    dataset = load_text_dataset(text_file)
    text = text_file.read_text(encoding="utf-8")
    ids = dataset.tokenizer.encode(text)
    assert len(dataset.train_ids) == int(0.9 * len(text))
    np.testing.assert_array_equal(dataset.train_ids, ids[: len(dataset.train_ids)])
    np.testing.assert_array_equal(dataset.validation_ids, ids[len(dataset.train_ids) :])
    assert dataset.tokenizer.vocab_size == len(set(text))


def test_reused_tokenizer_rejects_new_character(text_file, tmp_path):
    dataset = load_text_dataset(text_file)
    other = tmp_path / "other.txt"
    other.write_text("abc ~ " * 10, encoding="utf-8")
    with pytest.raises(ValueError, match="'~'"):
        load_text_dataset(other, dataset.tokenizer)


def test_too_short_text(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(ValueError, match="only 3 characters"):
        load_text_dataset(short)


def test_sampler_targets_are_next_tokens():
    ids = np.arange(100, dtype=np.int32)
    sampler = BatchSampler(ids, batch_size=5, context_length=8, seed=0)
    inputs, targets = sampler.sample()
    assert inputs.shape == (5, 8)
    assert targets.shape == (5, 8)
    assert inputs.dtype == np.int32
    # With ids = 0..99 every window is consecutive and each target is its input + 1.
    np.testing.assert_array_equal(np.diff(inputs, axis=1), 1)
    np.testing.assert_array_equal(targets, inputs + 1)
    assert targets.max() <= 99


def test_sampler_state_restores_exactly():
    ids = np.random.default_rng(1).integers(0, 50, size=1000).astype(np.int32)
    sampler = BatchSampler(ids, batch_size=4, context_length=16, seed=7)
    sampler.sample()
    state = json.loads(json.dumps(sampler.get_state()))
    expected = [sampler.sample() for _ in range(3)]

    restored = BatchSampler(ids, batch_size=4, context_length=16, seed=999)
    restored.set_state(state)
    for (inputs, targets), (want_inputs, want_targets) in zip(
        (restored.sample() for _ in range(3)), expected, strict=True
    ):
        np.testing.assert_array_equal(inputs, want_inputs)
        np.testing.assert_array_equal(targets, want_targets)


def test_sampler_rejects_foreign_state():
    sampler = BatchSampler(np.arange(50), batch_size=2, context_length=4, seed=0)
    with pytest.raises(ValueError, match="'MT19937'.*'PCG64'"):
        sampler.set_state({"bit_generator": "MT19937", "state": {}})


def test_sampler_rejects_short_array():
    with pytest.raises(ValueError, match="needs context_length \\+ 1 = 11"):
        BatchSampler(np.arange(10), batch_size=2, context_length=10, seed=0)
