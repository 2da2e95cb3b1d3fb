"""Training metrics: model FLOPs and MFU, the per-step JSONL file, and the loss-curve plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from gpt2_spec import GPT2Config

logger = logging.getLogger(__name__)


def flops_per_token(config: GPT2Config) -> int:
    """Estimate training FLOPs per token: 6 N for the weights plus 12 L T d for attention.

    The formula is the one in the PaLM paper (appendix B) and nanoGPT's `estimate_mfu`,
    with N the parameter count, L layers, T the context length and d the width.
    """
    return 6 * config.num_parameters() + 12 * (
        config.num_layers * config.context_length * config.embedding_dim
    )


def measure_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """Measure float32 matmul FLOP/s on the default device, as the best of `repeats` runs.

    This is an estimate of the reachable peak, used as the MFU denominator; on a shared
    machine it moves with the load.
    """
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()  # compile outside the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class MetricsWriter:
    """Appends one JSON object per line to `RUN_DIR/metrics.jsonl`."""

    def __init__(self, path: str | Path, keep_through_step: int | None = None):
        """Open the file for appending.

        Args:
          path: The JSONL file.
          keep_through_step: When resuming, drop lines after this step (written by an
            interrupted run after its last checkpoint); None starts a new file.
        """
        self.path = Path(path)
        kept = []
        if keep_through_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= keep_through_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a metrics JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> None:
    """Draw train loss per step and validation loss per eval step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    validation = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss (per step)", linewidth=0.8)
    if validation:
        axis.plot(*zip(*validation, strict=True), "o-", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats per token)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
