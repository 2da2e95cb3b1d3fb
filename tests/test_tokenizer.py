"""Character tokenizer and token-id validation."""

import numpy as np
import pytest

from gpt2_spec import CharTokenizer, check_length, check_token_ids, preset


def test_round_trip():
    tokenizer = CharTokenizer.from_text("hello world")
    ids = tokenizer.encode("hold")
    assert ids.dtype == np.int32
    assert tokenizer.decode(ids) == "hold"
    assert tokenizer.vocab_size == len(set("hello world"))


def test_ids_follow_sorted_alphabet():
    tokenizer = CharTokenizer.from_text("cab")
    assert tokenizer.encode("abc").tolist() == [0, 1, 2]


def test_unknown_character_is_named():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"Character 'z' at position 1 .* 3-character vocabulary"):
        tokenizer.encode("az")


def test_json_round_trip():
    tokenizer = CharTokenizer.from_text("To be, or not to be\n")
    restored = CharTokenizer.from_json(tokenizer.to_json())
    assert restored.chars == tokenizer.chars


def test_empty_text_rejected():
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")


def test_decode_out_of_range():
    with pytest.raises(ValueError, match=r"Token id 7 is outside \[0, 3\)"):
        CharTokenizer.from_text("abc").decode([0, 7])


def test_check_token_ids_names_first_bad_id():
    with pytest.raises(ValueError, match=r"Token id 65 at index \(0, 2\) .* \[0, 65\)"):
        check_token_ids(np.array([[1, 2, 65, -1]]), vocab_size=65)
    with pytest.raises(ValueError, match=r"Token id -1 at index \(1,\)"):
        check_token_ids(np.array([3, -1]), vocab_size=65)


def test_check_token_ids_rejects_floats():
    with pytest.raises(TypeError, match="must be integers"):
        check_token_ids(np.array([1.0, 2.0]), vocab_size=65)


def test_check_length():
    config = preset("shakespeare-char")
    check_length(64, config)
    with pytest.raises(ValueError, match="has 65 tokens but the model's context length is 64"):
        check_length(65, config)
