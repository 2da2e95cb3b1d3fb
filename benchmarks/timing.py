"""Timing primitives: compile time apart from steady state, repeat statistics, and figures.

Every measured number leaves this module as a `Figure`: a name, a value and its unit, so
the JSON report and the plots never guess units.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Figure:
    """One reported number.

    Attributes:
      name: Dotted name, for example `shakespeare-char.flax.forward.median`.
      value: The number.
      unit: Its unit (`s`, `tokens/s`, `FLOP/s`, `ratio`, `bytes`, ...).
      note: How it was measured, where the name alone does not show it.
    """

    name: str
    value: float
    unit: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one jit'ed function: the first call apart, then repeats.

    Attributes:
      compile_s: First call (tracing, compilation and one execution).
      times_s: Steady-state seconds of each measured repeat, after warm-up.
    """

    compile_s: float
    times_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def figures(self, name: str, note: str = "") -> list[Figure]:
        """Return the compile time and the median, min and max of the repeats."""
        return [
            Figure(f"{name}.compile", self.compile_s, "s", "first call: trace, compile, run"),
            Figure(f"{name}.median", self.median_s, "s", note),
            Figure(f"{name}.min", self.min_s, "s", note),
            Figure(f"{name}.max", self.max_s, "s", note),
        ]


def time_call(
    fn: Callable[[], Any], *, repeats: int, warmup: int = 1, block: bool = True
) -> Timing:
    """Time `fn()`: the first call as compile time, then `warmup` unmeasured calls, then repeats.

    Each measurement waits for `jax.block_until_ready` on the result before stopping the
    clock, because JAX dispatches asynchronously.

    Args:
      fn: A zero-argument callable, usually a closure over a jit'ed function.
      repeats: Number of measured calls (at least 1).
      warmup: Unmeasured calls after the first one.
      block: Whether to block on the result (set False for PyTorch callables).

    Raises:
      ValueError: if `repeats` is below 1 or `warmup` is negative.
    """
    unblocked = frozenset() if block else frozenset({"fn"})
    return time_interleaved({"fn": fn}, repeats=repeats, warmup=warmup, unblocked=unblocked)["fn"]


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    unblocked: frozenset[str] = frozenset(),
) -> dict[str, Timing]:
    """Time several callables in round-robin order, so that all of them see the same load.

    Each callable's first call (its compile time) and warm-up calls come first; then every
    round calls each one once. On a shared machine this keeps ratios between the callables
    far steadier than timing one after the other.

    Args:
      calls: Zero-argument callables by name.
      repeats: Measured rounds (at least 1).
      warmup: Unmeasured calls of each after its first call.
      unblocked: Names whose results are not JAX arrays (PyTorch callables).

    Raises:
      ValueError: if `repeats` is below 1 or `warmup` is negative.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be 0 or more, got {warmup}.")

    def run_once(name: str) -> float:
        start = time.perf_counter()
        result = calls[name]()
        if name not in unblocked:
            jax.block_until_ready(result)
        return time.perf_counter() - start

    compile_s = {}
    for name in calls:
        compile_s[name] = run_once(name)
        for _ in range(warmup):
            run_once(name)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name in calls:
            times[name].append(run_once(name))
    return {name: Timing(compile_s[name], tuple(times[name])) for name in calls}


def measure_matmul_rate(size: int, repeats: int) -> tuple[float, Timing]:
    """Measure the float32 matmul rate of the default device with a jit'ed [size, size] matmul.

    Returns:
      The rate in FLOP/s (2 * size**3 per product, at the median time) and its timing.
    """
    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.normal(keys[0], (size, size), jax.numpy.float32)
    b = jax.random.normal(keys[1], (size, size), jax.numpy.float32)
    matmul = jax.jit(jax.numpy.matmul)
    timing = time_call(lambda: matmul(a, b), repeats=repeats, warmup=2)
    rate = 2.0 * size**3 / timing.median_s
    logger.info("float32 matmul %dx%d: %.3g FLOP/s", size, size, rate)
    return rate, timing


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size so far (`getrusage` max RSS; Linux KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
