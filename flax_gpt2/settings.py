"""Training settings, kept apart from the model architecture."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gpt2_spec import axes as ax


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How to train, with defaults from nanoGPT's `train_shakespeare_char` CPU recipe.

    That recipe (context 64, batch 12, 4 layers, 4 heads, width 128, 2000 steps, dropout 0)
    reports validation loss 1.88 on tiny-shakespeare.

    Attributes:
      steps: Number of optimizer steps to run in total (a resumed run stops here too).
      batch_size: Sequences per step, split over the mesh's data and fsdp axes.
      learning_rate: Peak learning rate, reached after the warmup.
      min_learning_rate: Learning rate at the end of the cosine decay.
      warmup_steps: Steps of linear warmup from 0 to `learning_rate`.
      lr_decay_steps: Step at which the cosine decay reaches `min_learning_rate`;
        None means `steps`. Later steps keep the minimum.
      weight_decay: AdamW decoupled weight decay, applied to parameters with two or more
        dimensions (kernels and embeddings), not to biases or LayerNorm, as nanoGPT does.
      beta1: AdamW first-moment decay.
      beta2: AdamW second-moment decay.
      grad_clip: Maximum global gradient norm; 0 turns clipping off.
      eval_interval: Steps between validation-loss estimates (the last step always has one).
      eval_batches: Random windows batches averaged per loss estimate.
      log_interval: Steps between log lines after the first few steps.
      checkpoint_interval: Steps between checkpoints (the last step always has one).
      seed: Seed of parameter init, data sampling and dropout.
      mesh: Mesh axis sizes, for example {"data": 2, "model": 4}; missing axes
        default to 1, and `data` to the devices left over.
      peak_flops: FLOP/s used as the MFU denominator; None measures a float32 matmul once.
      sample_chars: Characters sampled from the model at the end; 0 skips the sample.
    """

    steps: int = 2000
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 50
    log_interval: int = 50
    checkpoint_interval: int = 500
    seed: int = 1337
    mesh: dict[str, int] = dataclasses.field(default_factory=dict)
    peak_flops: float | None = None
    sample_chars: int = 300

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_interval", "eval_batches", "log_interval"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("checkpoint_interval", self.checkpoint_interval, minimum=1)
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("sample_chars", self.sample_chars, minimum=0)
        _check_int("seed", self.seed, minimum=0)

        if self.lr_decay_steps is not None:
            _check_int("lr_decay_steps", self.lr_decay_steps, minimum=1)
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be below the end of the learning-rate "
                f"decay ({self.decay_steps}, from lr_decay_steps or steps); lower warmup_steps "
                "or train longer."
            )
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                "Learning rates must satisfy 0 <= min_learning_rate <= learning_rate, got "
                f"min_learning_rate={self.min_learning_rate} and "
                f"learning_rate={self.learning_rate}."
            )

        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"weight_decay and grad_clip must be >= 0, got {self.weight_decay} "
                f"and {self.grad_clip}."
            )

        unknown = sorted(set(self.mesh) - set(ax.MESH_AXES))
        if unknown:
            raise ValueError(f"Unknown mesh axes {unknown}; use {', '.join(ax.MESH_AXES)}.")

    @property
    def decay_steps(self) -> int:
        """Step at which the cosine decay ends."""
        return self.steps if self.lr_decay_steps is None else self.lr_decay_steps

    def replace(self, **changes: Any) -> TrainSettings:
        """Return a copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainSettings:
        """Parse `to_json` output, rejecting unknown keys."""
        values = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown train settings {unknown}; expected some of {sorted(known)}.")
        return cls(**values)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
