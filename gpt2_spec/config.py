"""GPT-2 model configuration and named presets, shared by both twins."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Literal

PositionEncoding = Literal["learned", "p-rope"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """Architecture of one GPT-2 model.

    Token embeddings are always tied to the output head, as in GPT-2.

    Attributes:
      vocab_size: Number of token ids (the `vocabulary` axis).
      context_length: Maximum number of positions a sequence may have.
      embedding_dim: Width of the residual stream (the `embedding` axis).
      num_layers: Number of transformer blocks.
      num_heads: Number of attention heads (the `heads` axis).
      mlp_hidden_dim: Width of the MLP hidden layer (the `neurons` axis).
        `None` means 4 x `embedding_dim`, as in GPT-2.
      embedding_dropout: Dropout rate on the sum of token and position
        embeddings.
      attention_dropout: Dropout rate on attention probabilities.
      residual_dropout: Dropout rate on the output of each attention and MLP
        branch before it is added to the residual stream.
      layer_norm_epsilon: Epsilon added to the variance in every LayerNorm.
      position_encoding: `learned` for GPT-2's absolute position table, or
        `p-rope` for rotary embeddings on a fraction of the frequencies.
      rope_fraction: Fraction p in [0, 1] of rotary frequencies kept by p-RoPE
        (1 is plain RoPE, 0 is no position information at all).
      rope_theta: Base wavelength theta of the rotary frequencies.
    """

    vocab_size: int
    context_length: int
    embedding_dim: int
    num_layers: int
    num_heads: int
    mlp_hidden_dim: int | None = None
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    position_encoding: PositionEncoding = "learned"
    rope_fraction: float = 1.0
    rope_theta: float = 10_000.0

    def __post_init__(self) -> None:
        if self.mlp_hidden_dim is None:
            object.__setattr__(self, "mlp_hidden_dim", 4 * self.embedding_dim)
        self._validate()

    def _validate(self) -> None:
        for name in (
            "vocab_size",
            "context_length",
            "embedding_dim",
            "num_layers",
            "num_heads",
            "mlp_hidden_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.embedding_dim % self.num_heads != 0:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} is not divisible by "
                f"num_heads={self.num_heads}; choose a head count that divides the width "
                f"(for example {_divisors_hint(self.embedding_dim)})."
            )
        for name in ("embedding_dropout", "attention_dropout", "residual_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate!r}.")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}."
            )
        if self.position_encoding not in ("learned", "p-rope"):
            raise ValueError(
                f"position_encoding must be 'learned' or 'p-rope', got {self.position_encoding!r}."
            )
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction p must be in [0, 1], got {self.rope_fraction!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta!r}.")
        if self.position_encoding == "p-rope" and self.projection_dim % 2 != 0:
            raise ValueError(
                f"p-RoPE needs an even head width, but embedding_dim / num_heads = "
                f"{self.embedding_dim} / {self.num_heads} = {self.projection_dim}; "
                "change num_heads or embedding_dim."
            )

    @property
    def projection_dim(self) -> int:
        """Per-head width of queries, keys and values (the `projection` axis)."""
        return self.embedding_dim // self.num_heads

    @property
    def num_rotated_frequencies(self) -> int:
        """Number r = floor(p * d / 2) of rotary frequencies p-RoPE keeps."""
        if self.position_encoding != "p-rope":
            return 0
        return int(self.rope_fraction * (self.projection_dim // 2))

    def num_parameters(self) -> int:
        """Count the parameters, with the tied output head counted once."""
        d, n, v = self.embedding_dim, self.mlp_hidden_dim, self.vocab_size
        per_block = 2 * 2 * d + 4 * (d * d + d) + (d * n + n) + (n * d + d)
        positions = self.context_length * d if self.position_encoding == "learned" else 0
        return v * d + positions + self.num_layers * per_block + 2 * d

    def replace(self, **changes: Any) -> GPT2Config:
        """Return a copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPT2Config:
        """Build a config from `to_dict` output, rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown GPT2Config keys {unknown}; expected a subset of {sorted(known)}."
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _divisors_hint(width: int) -> str:
    divisors = [k for k in range(1, min(width, 64) + 1) if width % k == 0]
    return ", ".join(str(k) for k in divisors[-4:])


# GPT-2 shapes from Radford et al. 2019, with the 50,257-token BPE vocabulary.
_GPT2_SHAPES = {
    "gpt2-124m": dict(embedding_dim=768, num_layers=12, num_heads=12),
    "gpt2-355m": dict(embedding_dim=1024, num_layers=24, num_heads=16),
    "gpt2-774m": dict(embedding_dim=1280, num_layers=36, num_heads=20),
    "gpt2-1.5b": dict(embedding_dim=1600, num_layers=48, num_heads=25),
}


def _gpt2_preset(shape: dict[str, int]) -> Callable[..., GPT2Config]:
    def build(vocab_size: int = 50_257, **overrides: Any) -> GPT2Config:
        fields = dict(
            vocab_size=vocab_size,
            context_length=1024,
            embedding_dropout=0.1,
            attention_dropout=0.1,
            residual_dropout=0.1,
            **shape,
        )
        return GPT2Config(**{**fields, **overrides})

    return build


def shakespeare_char(vocab_size: int = 65, **overrides: Any) -> GPT2Config:
    """nanoGPT's CPU recipe for character-level Shakespeare: 4 layers, 4 heads, 128 wide."""
    fields = dict(
        vocab_size=vocab_size,
        context_length=64,
        embedding_dim=128,
        num_layers=4,
        num_heads=4,
    )
    return GPT2Config(**{**fields, **overrides})


def shakespeare_char_large(vocab_size: int = 65, **overrides: Any) -> GPT2Config:
    """nanoGPT's GPU recipe for character-level Shakespeare: 6 layers, 6 heads, 384 wide."""
    fields = dict(
        vocab_size=vocab_size,
        context_length=256,
        embedding_dim=384,
        num_layers=6,
        num_heads=6,
        embedding_dropout=0.2,
        attention_dropout=0.2,
        residual_dropout=0.2,
    )
    return GPT2Config(**{**fields, **overrides})


PRESETS: dict[str, Callable[..., GPT2Config]] = {
    "shakespeare-char": shakespeare_char,
    "shakespeare-char-large": shakespeare_char_large,
    **{name: _gpt2_preset(shape) for name, shape in _GPT2_SHAPES.items()},
}


def preset(name: str, **overrides: Any) -> GPT2Config:
    """Build a named preset, optionally overriding fields (for example `vocab_size`).

    Raises:
      ValueError: if `name` is not a known preset.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name](**overrides)
