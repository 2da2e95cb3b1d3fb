"""Benchmark settings and the shapes each preset is measured at."""

from __future__ import annotations

import dataclasses

from gpt2_spec import GPT2Config, preset

PARTS = ("forward", "train", "generation", "torch")

# The `--quick` shape: small enough that a whole run compiles and finishes in well under a
# minute on 2 CPU cores, large enough that every code path (blocks, heads, MLP) runs.
QUICK_SHAPE = dict(context_length=32, embedding_dim=64, num_layers=2, num_heads=4)

# New tokens generated per preset. 256 for GPT-2 shapes and 200 for shakespeare-char-large
# are the generation targets; shakespeare-char's 64-token context leaves room for 48.
NEW_TOKENS = {"shakespeare-char": 48, "shakespeare-char-large": 200}
GPT2_NEW_TOKENS = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """Settings of one benchmark run.

    Attributes:
      presets: Preset names from `gpt2_spec.PRESETS`, measured in order.
      quick: Whether each preset is shrunk to `QUICK_SHAPE` (its vocabulary kept).
      parts: Subset of `PARTS` to run.
      batch_size: Rows per batch for forward and train step.
      max_seq: Maximum sequence length timed in forward and train step (the context if
        shorter).
      repeats: Measured repeats of each timed call, after one compile call and one warm-up.
      generation_batches: Batch sizes for generation.
      prompt_len: Prompt tokens before generation.
      recompute_steps: Tokens the full-recomputation baseline generates per timing; each
        costs one full-window forward pass, so per-token figures do not depend on it.
      matmul_size: Side of the square float32 matmul that measures the machine's rate.
      torch_threads: `torch.set_num_threads` value, or None for the usable cores.
    """

    presets: tuple[str, ...] = ("shakespeare-char", "shakespeare-char-large")
    quick: bool = False
    parts: tuple[str, ...] = PARTS
    batch_size: int = 12
    max_seq: int = 256
    repeats: int = 5
    generation_batches: tuple[int, ...] = (1, 12)
    prompt_len: int = 16
    recompute_steps: int = 32
    matmul_size: int = 1024
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in self.presets:
            preset(name)  # raises ValueError naming the known presets
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise ValueError(f"Unknown benchmark parts {unknown}; choose from {', '.join(PARTS)}.")
        for name in ("batch_size", "max_seq", "repeats", "prompt_len", "recompute_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.generation_batches or min(self.generation_batches) < 1:
            raise ValueError(
                f"generation_batches must be positive sizes, got {self.generation_batches}."
            )

    @classmethod
    def quick_run(cls, presets: tuple[str, ...] = ("shakespeare-char",)) -> BenchSettings:
        """Return the CI smoke-test settings: tiny shapes, 2 repeats, small matmul."""
        return cls(
            presets=presets,
            quick=True,
            batch_size=4,
            repeats=2,
            generation_batches=(2,),
            prompt_len=4,
            recompute_steps=4,
            matmul_size=256,
        )

    def config(self, name: str) -> GPT2Config:
        """Return the preset's config (shrunk in quick mode) with dropout off."""
        config = preset(name)
        if self.quick:
            config = config.replace(**QUICK_SHAPE)
        return config.replace(embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0)

    def label(self, name: str) -> str:
        """Return the preset's name in figure names (`NAME@quick` for the shrunk shape)."""
        return f"{name}@quick" if self.quick else name

    def seq_len(self, config: GPT2Config) -> int:
        return min(config.context_length, self.max_seq)

    def new_tokens(self, name: str, config: GPT2Config) -> int:
        """Return the tokens to generate: the preset's target, capped by the context."""
        target = NEW_TOKENS.get(name, GPT2_NEW_TOKENS)
        return max(1, min(target, config.context_length - self.prompt_len))
