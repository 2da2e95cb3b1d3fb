"""Model config: presets, derived sizes and rejected settings."""

import pytest

from gpt2_spec import GPT2Config, preset


def test_shakespeare_preset_is_nanogpt_cpu_recipe():
    config = preset("shakespeare-char")
    assert (config.num_layers, config.num_heads, config.embedding_dim) == (4, 4, 128)
    assert config.context_length == 64
    assert config.mlp_hidden_dim == 512
    assert config.projection_dim == 32


@pytest.mark.parametrize(
    "name, width, layers, heads",
    [
        ("gpt2-124m", 768, 12, 12),
        ("gpt2-355m", 1024, 24, 16),
        ("gpt2-774m", 1280, 36, 20),
        ("gpt2-1.5b", 1600, 48, 25),
        ("shakespeare-char-large", 384, 6, 6),
    ],
)
def test_preset_shapes(name, width, layers, heads):
    config = preset(name)
    assert (config.embedding_dim, config.num_layers, config.num_heads) == (width, layers, heads)


def test_gpt2_124m_parameter_count():
    # 124,439,808 is the published count of GPT-2 small with the tied head counted once.
    assert preset("gpt2-124m").num_parameters() == 124_439_808


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'.*shakespeare-char"):
        preset("gpt5")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_heads=5), "embedding_dim=128 is not divisible by num_heads=5"),
        (dict(embedding_dim=0), "embedding_dim must be a positive integer, got 0"),
        (dict(num_layers=-1), "num_layers must be a positive integer"),
        (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
        (
            dict(position_encoding="p-rope", rope_fraction=1.5),
            r"rope_fraction p must be in \[0, 1\]",
        ),
        (dict(position_encoding="alibi"), "position_encoding must be 'learned' or 'p-rope'"),
        (dict(attention_dropout=1.0), r"attention_dropout must be in \[0, 1\)"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon must be positive"),
    ],
)
def test_invalid_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("shakespeare-char").replace(**changes)


def test_odd_head_width_with_rope():
    with pytest.raises(ValueError, match="p-RoPE needs an even head width.*= 9"):
        GPT2Config(
            vocab_size=10,
            context_length=8,
            embedding_dim=18,
            num_layers=1,
            num_heads=2,
            position_encoding="p-rope",
        )


def test_odd_head_width_without_rope_is_fine():
    config = GPT2Config(
        vocab_size=10, context_length=8, embedding_dim=18, num_layers=1, num_heads=2
    )
    assert config.projection_dim == 9


def test_dict_round_trip_and_unknown_keys():
    config = preset("shakespeare-char", position_encoding="p-rope", rope_fraction=0.25)
    assert GPT2Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"Unknown GPT2Config keys \['n_embd'\]"):
        GPT2Config.from_dict({**config.to_dict(), "n_embd": 3})


def test_num_rotated_frequencies():
    config = preset("shakespeare-char", position_encoding="p-rope", rope_fraction=0.25)
    assert config.num_rotated_frequencies == 4  # floor(0.25 * 32 / 2)
    assert preset("shakespeare-char").num_rotated_frequencies == 0
