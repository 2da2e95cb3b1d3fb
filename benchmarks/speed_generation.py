"""Speed of greedy generation with a KV cache against full recomputation, for both twins.

Cached paths timed, each against its twin's full-recomputation loop:
- `flax`, `penzai`: the benchmark's own cached loops (`benchmarks.generation`).
- `bridge-flax`, `bridge-penzai`: the project's public `bridge.generate.generate`, greedy,
  which also pads prompts and rounds the token budget up to a power-of-two bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import generation, twins
from benchmarks.settings import BenchSettings
from benchmarks.timing import Figure, Timing, time_call
from bridge.convert import flax_to_penzai
from gpt2_spec import GPT2Config
from penzai_gpt2.dropout import remove_dropout

logger = logging.getLogger(__name__)

Generate = Callable[[jax.Array], Any]


def _per_token_figures(name: str, timing: Timing, steps: int, batch: int, note: str):
    latency = timing.median_s / steps
    return [
        *timing.figures(name, note),
        Figure(f"{name}.per_token_latency", latency, "s/token", "median time / new tokens"),
        Figure(f"{name}.tokens_per_s", batch / latency, "tokens/s", "batch x new tokens / time"),
    ]


def _own_cached_fns(config: GPT2Config, params: Any, batch: int, prompt_len: int, new: int):
    generate, weights, states = generation.penzai_cached_generate_fn(
        remove_dropout(flax_to_penzai(params, config)), config, batch, prompt_len, new
    )
    flax_generate = generation.cached_generate_fn(config, batch, prompt_len, new)
    return {
        "flax": lambda prompt: flax_generate(params, prompt),
        "penzai": lambda prompt: generate(weights, states, prompt),
    }


def _bridge_fns(config: GPT2Config, params: Any, new_tokens: int) -> dict[str, Generate]:
    from bridge.decode_steps import make_twin
    from bridge.generate import GenerationSettings, generate

    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0)
    fns: dict[str, Generate] = {}
    for twin in ("flax", "penzai"):
        model = make_twin(twin, params, config)
        fns[f"bridge-{twin}"] = lambda prompt, model=model: (
            generate(model, list(np.asarray(prompt)), settings).tokens
        )
    return fns


def generation_figures(
    label: str, name: str, config: GPT2Config, settings: BenchSettings
) -> tuple[list[Figure], list[str]]:
    """Time cached and recomputed generation at each batch size.

    Returns:
      The figures, and notes on what was skipped or where cached and recomputed greedy
      tokens disagree.
    """
    params = twins.random_params(config)
    new_tokens = settings.new_tokens(name, config)
    figures: list[Figure] = []
    notes: list[str] = []
    for batch in settings.generation_batches:
        prompt = jax.random.randint(
            jax.random.key(batch), (batch, settings.prompt_len), 0, config.vocab_size
        ).astype(jnp.int32)
        cached = _own_cached_fns(config, params, batch, settings.prompt_len, new_tokens)
        cached.update(_bridge_fns(config, params, new_tokens))
        recomputed = {
            twin: _time_recompute(f"{label}.generate.b{batch}.{twin}", twin, config, params, prompt,
                                  new_tokens, settings)
            for twin in ("flax", "penzai")
        }  # fmt: skip
        for path, generate in cached.items():
            twin = path.removeprefix("bridge-")
            base = f"{label}.generate.b{batch}.{path}"
            try:
                path_figures, path_notes = _time_cached(
                    base, generate, prompt, new_tokens, recomputed[twin], settings
                )
            except flax.errors.FlaxError as error:
                # A Flax twin whose decode mode fails (for example, a cache variable
                # named like a submodule) is reported, and the rest is still measured.
                logger.warning("%s failed, so it is not timed: %s", base, error)
                notes.append(f"{base}: skipped, {type(error).__name__}: {str(error)[:120]}")
                continue
            figures += path_figures
            notes += path_notes
        for twin_figures, _, _ in recomputed.values():
            figures += twin_figures
    return figures, notes


def _time_recompute(base, twin, config, params, prompt, new_tokens, settings):
    """Time one twin's full-recomputation loop; return (figures, seconds per token, ids)."""
    batch, prompt_len = prompt.shape
    steps = min(settings.recompute_steps, new_tokens)
    build = twins.flax_steps if twin == "flax" else twins.penzai_steps
    twin_steps = build(config, params)
    recompute = generation.recompute_generate_fn(
        twin_steps.forward, config, batch, prompt_len, new_tokens, steps
    )
    timing = time_call(lambda: recompute(twin_steps.weights, prompt), repeats=_repeats(settings))
    note = f"fixed window {prompt_len + new_tokens}, {steps} tokens timed"
    figures = _per_token_figures(f"{base}.recompute", timing, steps, batch, note)
    ids = np.asarray(recompute(twin_steps.weights, prompt))[:, prompt_len : prompt_len + steps]
    return figures, timing.median_s / steps, ids


def _time_cached(base, generate, prompt, new_tokens, recomputed, settings):
    batch, prompt_len = prompt.shape
    _, recompute_latency, recompute_ids = recomputed
    timing = time_call(lambda: generate(prompt), repeats=_repeats(settings))
    note = f"prompt {prompt_len}, {new_tokens} new tokens, prefill included"
    figures = _per_token_figures(f"{base}.cached", timing, new_tokens, batch, note)
    speedup = recompute_latency / (timing.median_s / new_tokens)
    figures.append(
        Figure(
            f"{base}.cached_speedup",
            speedup,
            "ratio",
            "per-token latency of full recomputation / with KV cache, same twin",
        )
    )
    logger.info("%s: cached generation %.1fx faster than recomputation", base, speedup)
    new_ids = np.asarray(generate(prompt))
    if new_ids.shape[1] != new_tokens:  # the benchmark's own loops return prompt + new ids
        new_ids = new_ids[:, prompt_len:]
    steps = recompute_ids.shape[1]
    if not np.array_equal(new_ids[:, :steps], recompute_ids):
        return figures, [f"{base}: cached and recomputed greedy tokens differ"]
    return figures, []


def _repeats(settings: BenchSettings) -> int:
    # Generation runs are long, so they take half the repeats (at least 2).
    return max(2, settings.repeats // 2)
