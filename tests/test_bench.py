"""`gpt2-twins bench`: the report's figures, its parity rows, and the harness's own parts.

Nothing here asserts a wall-clock time. The checks are on structure, units and finiteness,
and on values that do not depend on machine speed (parity, FLOP counts, generated tokens).
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from benchmarks import generation, twins
from benchmarks.run import invalid_figures
from benchmarks.settings import BenchSettings
from benchmarks.speed import flops_per_token
from benchmarks.timing import time_call
from bridge.cli import main
from bridge.convert import flax_to_penzai
from gpt2_spec import GPT2Config
from penzai_gpt2.dropout import remove_dropout

TINY = GPT2Config(vocab_size=37, context_length=16, embedding_dim=32, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, hf_fixture_dir):
    folder = tmp_path_factory.mktemp("bench")
    path = folder / "report.json"
    status = main(
        [
            "bench",
            "--quick",
            "--json",
            str(path),
            "--plots",
            str(folder / "plots"),
            "--fixture",
            str(hf_fixture_dir),
        ]
    )
    assert status == 0
    return json.loads(path.read_text()), folder


@pytest.mark.slow
def test_quick_figures_finite_positive(quick_report):
    report, _ = quick_report
    assert report["figures"], "the report has no figures"
    for figure in report["figures"]:
        assert figure["unit"], f"{figure['name']} has no unit"
        assert math.isfinite(figure["value"]), figure["name"]
        assert figure["value"] > 0, figure["name"]
    assert invalid_figures(report) == []


@pytest.mark.slow
def test_quick_has_every_part(quick_report):
    report, folder = quick_report
    names = {figure["name"] for figure in report["figures"]}
    label = "shakespeare-char@quick"
    expected = [
        "machine.matmul_float32",
        f"{label}.flax.forward.median",
        f"{label}.penzai.train_step.compile",
        f"{label}.flax.train_step.mfu",
        f"{label}.ratio.penzai_over_flax.forward",
        f"{label}.ratio.penzai_over_flax.train_step",
        f"{label}.generate.b2.penzai.cached_speedup",
        f"{label}.generate.b2.flax.recompute.per_token_latency",
        f"{label}.process.peak_rss",
    ]
    for name in expected:
        assert name in names, f"missing figure {name}"
    if report["run"]["versions"]["torch"] is not None:
        assert f"{label}.ratio.flax_over_torch.train_step" in names
    for png in ("time_ratios.png", "generation_speedup.png", "parity_layers.png"):
        assert (folder / "plots" / png).stat().st_size > 0, png


@pytest.mark.slow
def test_quick_run_info(quick_report):
    report, _ = quick_report
    run = report["run"]
    assert run["machine"]["cpu_count"] >= 1
    assert run["machine"]["cpu_model"]
    for package in ("python", "jax", "jaxlib", "flax", "penzai", "optax", "numpy"):
        assert run["versions"][package], package


@pytest.mark.slow
def test_quick_parity_rows(quick_report):
    report, _ = quick_report
    rows = report["parity"]
    layers = {row["layer"] for row in rows}
    assert {"embed", "block_0", "block_1", "ln_f", "logits"} <= layers
    for row in rows:
        assert math.isfinite(row["max_abs_diff"]), row
        assert row["max_abs_diff"] >= 0, row
        assert row["unit"]
    float32 = [row for row in rows if row["first"].endswith("float32")]
    for row in float32:
        # Fixture README: a correct float32 port meets atol 1e-4 on activations and logits.
        assert row["max_abs_diff"] < 1e-4, row


def test_flops_per_token_by_hand():
    # N without positions: 37*32 + 2 * (4*32 + 4*(32*32+32) + (32*128+128) + (128*32+32)) + 64.
    params = 37 * 32 + 2 * (4 * 32 + 4 * (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)) + 64
    expected = 6 * params + 12 * 2 * 32 * 16
    assert flops_per_token(TINY, 16, training=True) == expected
    assert flops_per_token(TINY, 16, training=False) == pytest.approx(expected / 3)


def cached_ids(twin: str, params, prompt: np.ndarray) -> np.ndarray:
    if twin == "flax":
        return np.asarray(generation.cached_generate_fn(TINY, 2, 3, 13)(params, prompt))
    penzai = remove_dropout(flax_to_penzai(params, TINY))
    generate, weights, states = generation.penzai_cached_generate_fn(penzai, TINY, 2, 3, 13)
    return np.asarray(generate(weights, states, prompt))


@pytest.mark.parametrize("twin", ["flax", "penzai"])
def test_cached_matches_recompute(twin):
    # Scaled-up weights make greedy tokens vary; GPT-2's small init repeats the last token.
    params = jax.tree.map(lambda value: 10 * value, twins.random_params(TINY))
    prompt = np.asarray([[1, 2, 3], [30, 0, 7]], np.int32)
    steps = twins.flax_steps(TINY, params)
    recompute = generation.recompute_generate_fn(steps.forward, TINY, 2, 3, 13)
    recomputed = np.asarray(recompute(steps.weights, prompt))
    cached = cached_ids(twin, params, prompt)
    assert len(np.unique(recomputed[:, 3:])) > 3, "greedy tokens do not vary"
    np.testing.assert_array_equal(cached[:, :3], prompt)
    np.testing.assert_array_equal(cached, recomputed)


def test_twins_train_step_same_loss():
    params = twins.random_params(TINY)
    tokens, targets = twins.random_batch(TINY, 2, 16)
    losses = []
    for build in (twins.flax_steps, twins.penzai_steps):
        steps = build(TINY, params)
        _, _, loss = steps.train_step(steps.weights, steps.opt_state, tokens, targets)
        losses.append(float(loss))
    assert math.isfinite(losses[0])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_window_too_long_rejected():
    with pytest.raises(ValueError, match="exceeds context_length 16"):
        generation.recompute_generate_fn(lambda w, t: t, TINY, 1, 8, 9)


def test_time_call_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        time_call(lambda: jax.numpy.zeros(1), repeats=0)


def test_settings_reject_unknown_part():
    with pytest.raises(ValueError, match=r"Unknown benchmark parts \['speed'\]"):
        BenchSettings(parts=("forward", "speed"))


def test_settings_reject_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'"):
        BenchSettings(presets=("gpt5",))


def test_cli_reports_bad_parts(capsys):
    assert main(["bench", "--quick", "--parts", "forward,speed", "--no-parity"]) == 2
    assert "Unknown benchmark parts ['speed']" in capsys.readouterr().err


def test_invalid_figures_lists_bad_values():
    report = {
        "figures": [
            {"name": "a", "value": 1.0, "unit": "s"},
            {"name": "b", "value": float("nan"), "unit": "s"},
            {"name": "c", "value": 0.0, "unit": "s"},
            {"name": "d", "value": 2.0, "unit": ""},
        ]
    }
    assert invalid_figures(report) == ["b = nan", "c = 0.0", "d has no unit"]
