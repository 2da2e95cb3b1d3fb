"""HTML views: self-contained pages whose embedded data matches the arrays given."""

import json
import re

import jax
import numpy as np
import pytest

from bridge.convert import flax_to_penzai
from flax_gpt2.params import init_params
from gpt2_spec import GPT2Config
from penzai_gpt2 import views
from penzai_gpt2.views.html import display_token, json_for_script


def embedded_data(page: str):
    match = re.search(r'<script id="page-data" type="application/json">(.*?)</script>', page, re.S)
    assert match, "page has no data script"
    return json.loads(match.group(1))


def assert_self_contained(page: str):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page
    assert "@import" not in page


def causal_patterns(batch, layers, heads, seq, seed=0):
    scores = np.random.default_rng(seed).normal(size=(batch, layers, heads, seq, seq))
    scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def test_attention_page_embeds_patterns():
    patterns = causal_patterns(2, 3, 4, 5)
    tokens = [list("hello"), list("world")]
    page = views.attention_page(patterns, tokens, title="demo")
    assert_self_contained(page)
    data = embedded_data(page)
    assert data["num_layers"] == 3
    assert data["num_heads"] == 4
    assert data["tokens"] == tokens
    np.testing.assert_allclose(np.array(data["patterns"]), patterns, atol=5e-5)
    for element_id in ("layer-select", "head-select", "sequence-select", "tokens", "matrix"):
        assert f'id="{element_id}"' in page


def test_attention_page_single_sequence(tmp_path):
    patterns = causal_patterns(1, 1, 2, 3)[0]
    path = views.save_attention_page(tmp_path / "a.html", patterns, ["a", " ", "\n"])
    data = embedded_data(path.read_text("utf-8"))
    assert data["tokens"] == [["a", "\u2423", "\u21b5"]]
    assert np.array(data["patterns"]).shape == (1, 1, 2, 3, 3)


def test_script_end_tag_in_token_is_escaped():
    label = "</script><b>x</b>"
    page = views.attention_page(causal_patterns(1, 1, 1, 2)[0], [label, "y"])
    assert page.count("</script>") == 2
    assert embedded_data(page)["tokens"][0][0] == label


@pytest.mark.parametrize(
    "patterns, tokens, message",
    [
        (np.zeros((2, 3, 3)), ["a", "b", "c"], r"shape \[batch, layer, head, query, key\]"),
        (np.zeros((1, 1, 2, 3)), ["a", "b"], "query == key"),
        (np.zeros((1, 1, 3, 3)), ["a", "b"], "2 token labels but the patterns cover 3"),
        (np.zeros((2, 1, 1, 3, 3)), [["a", "b", "c"]], "1 token sequences for 2 batch rows"),
    ],
    ids=["rank", "not-square", "labels", "batch"],
)
def test_attention_page_rejects_bad_input(patterns, tokens, message):
    with pytest.raises(ValueError, match=message):
        views.attention_page(patterns, tokens)


def test_token_scores_page_embeds_scores(tmp_path):
    scores = {"loss": [0.5, 2.0, 1.0], "neuron 7": np.array([-1.0, 0.0, 3.0])}
    path = views.save_token_scores_page(tmp_path / "t.html", ["x", "y", "z"], scores, "scores")
    page = path.read_text("utf-8")
    assert_self_contained(page)
    data = embedded_data(page)
    assert data["tokens"] == ["x", "y", "z"]
    assert data["scores"] == {"loss": [0.5, 2.0, 1.0], "neuron 7": [-1.0, 0.0, 3.0]}
    assert 'id="score-select"' in page


def test_token_scores_page_accepts_one_array():
    data = embedded_data(views.token_scores_page(["a", "b"], np.array([1.0, 2.0])))
    assert data["scores"] == {"score": [1.0, 2.0]}


@pytest.mark.parametrize(
    "scores, message",
    [
        ({"loss": [1.0]}, "has 1 values for 2 tokens"),
        ({"loss": [1.0, np.nan]}, "NaN or infinite"),
        ({}, "at least one score row"),
    ],
    ids=["length", "nan", "empty"],
)
def test_token_scores_page_rejects_bad_scores(scores, message):
    with pytest.raises(ValueError, match=message):
        views.token_scores_page(["a", "b"], scores)


def test_treescope_page_is_standalone(tmp_path):
    config = GPT2Config(
        vocab_size=11, context_length=8, embedding_dim=16, num_layers=1, num_heads=2
    )
    model = flax_to_penzai(init_params(config, jax.random.key(0)), config)
    path = views.save_treescope(tmp_path / "model.html", model, title="tiny")
    page = path.read_text("utf-8")
    assert page.startswith("<!doctype html>")
    assert "treescope-container" in page
    assert "<title>tiny</title>" in page
    assert_self_contained(page)
    assert not re.search(r"https?://", page)


def test_visible_tokens_and_json_escaping():
    assert display_token("a b\n\t") == "a\u2423b\u21b5\u21e5"
    assert json_for_script(["</script>"]) == '["<\\/script>"]'
    assert json.loads(json_for_script(["</script>"])) == ["</script>"]
