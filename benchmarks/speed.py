"""Speed of the two twins on the same weights and inputs: forward, train step, PyTorch reference.

Ratios come from medians measured in this process, interleaved, so they are steadier on a
busy machine than the absolute times.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import partial
from typing import Any

import jax

from benchmarks import twins
from benchmarks.settings import BenchSettings
from benchmarks.timing import Figure, Timing, time_interleaved
from gpt2_spec import GPT2Config

logger = logging.getLogger(__name__)


def flops_per_token(config: GPT2Config, seq: int, *, training: bool) -> float:
    """Estimate model FLOPs per token as nanoGPT does: 6N + 12 L D T for forward + backward.

    N counts the parameters without the position table, with the tied output head once.
    The 12 L D T term counts the attention score and mixing products. A forward pass is a
    third of the total.
    """
    positions = config.context_length * config.embedding_dim
    if config.position_encoding != "learned":
        positions = 0
    params = config.num_parameters() - positions
    total = 6 * params + 12 * config.num_layers * config.embedding_dim * seq
    return float(total if training else total / 3)


def throughput_figures(
    name: str, timing: Timing, tokens: int, flops: float, matmul_rate: float
) -> list[Figure]:
    """Return tokens/s and model FLOPs utilization at the median time."""
    rate = tokens / timing.median_s
    return [
        Figure(f"{name}.tokens_per_s", rate, "tokens/s"),
        Figure(
            f"{name}.mfu",
            rate * flops / matmul_rate,
            "fraction",
            "model FLOPs/s over the float32 matmul rate measured in this run",
        ),
    ]


def _compiled_bytes(fn: Any, *args: Any) -> float:
    stats = fn.lower(*args).compile().memory_analysis()
    if stats is None:
        return float("nan")
    return float(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _calls(
    config: GPT2Config, settings: BenchSettings, batch: tuple[jax.Array, jax.Array]
) -> tuple[dict[str, dict[str, Any]], dict[str, twins.TwinSteps]]:
    """Return zero-argument calls by part and by implementation, and each twin's steps."""
    tokens, targets = batch
    params = twins.random_params(config)
    steps = {"flax": twins.flax_steps(config, params), "penzai": twins.penzai_steps(config, params)}
    # The backward alone ("twin/grad_only") is timed in the train step's rounds, so the two
    # can be compared under the same load.
    calls: dict[str, dict[str, Any]] = {"forward": {}, "train_step": {}}
    for twin, step in steps.items():
        # Outputs are dropped, so every train step starts from the same weights.
        calls["forward"][twin] = partial(step.forward, step.weights, tokens)
        calls["train_step"][twin] = partial(
            step.train_step, step.weights, step.opt_state, tokens, targets
        )
        calls["train_step"][f"{twin}/grad_only"] = partial(
            step.grad_only, step.weights, tokens, targets
        )
    has_torch = importlib.util.find_spec("torch") is not None
    # The reference has learned positions only (p-RoPE configs are measured without it).
    if "torch" in settings.parts and has_torch and config.position_encoding == "learned":
        from benchmarks.torch_reference import torch_calls

        seq = settings.seq_len(config)
        reference = torch_calls(config, settings.batch_size, seq, settings.torch_threads)
        calls["forward"]["torch"] = reference["forward"]
        calls["train_step"]["torch"] = reference["train_step"]
    elif "torch" in settings.parts:
        logger.warning("The PyTorch reference is skipped: torch missing or not learned positions")
    if "forward" not in settings.parts:
        del calls["forward"]
    if "train" not in settings.parts:
        del calls["train_step"]
    return calls, steps


def speed_figures(
    label: str, config: GPT2Config, settings: BenchSettings, matmul_rate: float
) -> list[Figure]:
    """Time forward, train step and backward alone of both twins and the PyTorch reference.

    The implementations of each part are timed round-robin (`time_interleaved`), so they
    share the machine's load. Returns times, throughput, MFU, XLA buffer sizes and ratios.
    """
    seq = settings.seq_len(config)
    batch = twins.random_batch(config, settings.batch_size, seq)
    calls, steps = _calls(config, settings, batch)
    tokens = settings.batch_size * seq
    figures: list[Figure] = []
    timings: dict[str, dict[str, Timing]] = {}
    for part, by_name in calls.items():
        measured = time_interleaved(
            by_name, repeats=settings.repeats, unblocked=frozenset({"torch"})
        )
        flops = flops_per_token(config, seq, training=part != "forward")
        for key, timing in measured.items():
            name, _, timed_part = key.partition("/")
            timed_part = timed_part or part
            logger.info("%s %s %s: median %.4g s", label, name, timed_part, timing.median_s)
            timings.setdefault(name, {})[timed_part] = timing
            base = f"{label}.{name}.{timed_part}"
            runtime = "eager PyTorch" if name == "torch" else "jit"
            figures += timing.figures(base, f"{runtime}, batch {settings.batch_size} x seq {seq}")
            figures += throughput_figures(base, timing, tokens, flops, matmul_rate)
    if "train_step" in calls:
        for twin, step in steps.items():
            figures.append(_buffer_figure(f"{label}.{twin}.train_step", step, batch))
    figures += ratio_figures(label, "penzai", "flax", timings)
    figures += ratio_figures(label, "flax", "torch", timings)
    figures += ratio_figures(label, "penzai", "torch", timings)
    return figures


def _buffer_figure(name: str, step: twins.TwinSteps, batch: tuple[jax.Array, jax.Array]):
    footprint = _compiled_bytes(step.train_step, step.weights, step.opt_state, *batch)
    return Figure(
        f"{name}.xla_buffers",
        footprint,
        "bytes",
        "XLA memory_analysis: arguments + outputs + temporaries - aliased",
    )


def ratio_figures(
    label: str, numerator: str, denominator: str, timings: dict[str, dict[str, Timing]]
) -> list[Figure]:
    """Return median-time ratios numerator / denominator for every part both have."""
    figures = []
    if numerator not in timings or denominator not in timings:
        return figures
    for part in ("forward", "train_step"):
        if part in timings[numerator] and part in timings[denominator]:
            ratio = timings[numerator][part].median_s / timings[denominator][part].median_s
            figures.append(
                Figure(
                    f"{label}.ratio.{numerator}_over_{denominator}.{part}",
                    ratio,
                    "ratio",
                    f"median time of {numerator} / {denominator}; below 1 means "
                    f"{numerator} is faster",
                )
            )
    return figures
