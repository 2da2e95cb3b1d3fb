"""The training loop of the Flax twin: sharded steps, evaluation, logging and checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flax_gpt2 import checkpoint, sharding
from flax_gpt2.data import BatchSampler, TextDataset, load_text_dataset
from flax_gpt2.metrics import (
    MetricsWriter,
    flops_per_token,
    measure_peak_flops,
    plot_losses,
    read_metrics,
)
from flax_gpt2.params import init_params
from flax_gpt2.sample import sample_tokens
from flax_gpt2.settings import TrainSettings
from flax_gpt2.train_step import StepFunctions, make_optimizer, make_schedule, make_step_functions
from gpt2_spec import GPT2Config, preset

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainSettings", "train"]

# Steps logged one by one at the start, so that compile time shows in the log.
FIRST_STEPS_LOGGED = 5
# Files a run writes besides its checkpoints; `overwrite` removes exactly these.
RUN_OUTPUTS = ("metrics.jsonl", "loss.png", "sample.txt")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Summary of a finished training run.

    Attributes:
      run_dir: The run directory.
      step: The last step trained.
      train_loss: Mean train loss over `eval_batches` batches at the last step.
      val_loss: Mean validation loss over `eval_batches` batches at the last step.
      sample: The text sampled at the end ("" when `sample_chars` is 0).
      seconds: Wall time of the loop, compilation included.
    """

    run_dir: Path
    step: int
    train_loss: float
    val_loss: float
    sample: str
    seconds: float


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, built once before the first step."""

    config: GPT2Config
    settings: TrainSettings
    dataset: TextDataset
    mesh: jax.sharding.Mesh
    steps: StepFunctions
    batch_sharding: jax.sharding.NamedSharding
    params: Any
    opt_state: Any
    start_step: int
    sampler: BatchSampler


def train(
    data_path: str | Path,
    run_dir: str | Path,
    settings: TrainSettings | Mapping[str, Any] | None = None,
    *,
    preset_name: str = "shakespeare-char",
    model_overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train the Flax twin on a character-level text file and save the run to `run_dir`.

    Args:
      data_path: A UTF-8 text file; its first 90% trains and the rest validates.
      run_dir: Where checkpoints, metrics.jsonl, loss.png and sample.txt go.
      settings: Training settings, or a mapping of TrainSettings fields to change in the
        base settings: nanoGPT's Shakespeare CPU recipe, or on `resume` the settings
        saved in the run. None means the base settings unchanged.
      preset_name: Model preset; its vocabulary size is set to the text's alphabet.
      model_overrides: GPT2Config fields to change in the preset (for example dropout).
      resume: Continue the latest checkpoint in `run_dir` (its config and tokenizer).
      overwrite: Replace an existing run in `run_dir` instead of raising.

    Raises:
      FileNotFoundError: if the text is missing, or `resume` finds no checkpoint.
      ValueError: on invalid settings, an unknown preset, a bad mesh, or an existing run
        without `resume` or `overwrite`.
    """
    run_dir = Path(run_dir)
    if not resume:
        # Invalid settings raise here, before `overwrite` deletes anything.
        settings = _resolve_settings(settings, TrainSettings())
    _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        settings = _resolve_settings(settings, checkpoint.read_settings(run_dir))
    run = _build_run(data_path, run_dir, settings, preset_name, model_overrides, resume)
    start = time.perf_counter()
    train_loss, val_loss = _loop(run, run_dir)
    seconds = time.perf_counter() - start
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    text = _write_sample(run, run_dir)
    logger.info(
        "Finished step %d in %.1f s: train loss %.4f, validation loss %.4f.",
        settings.steps,
        seconds,
        train_loss,
        val_loss,
    )
    return TrainResult(run_dir, settings.steps, train_loss, val_loss, text, seconds)


def _resolve_settings(
    settings: TrainSettings | Mapping[str, Any] | None, base: TrainSettings
) -> TrainSettings:
    if isinstance(settings, TrainSettings):
        return settings
    return base.replace(**(settings or {}))


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ValueError("Give either resume or overwrite, not both.")
    exists = (run_dir / checkpoint.CONFIG_FILE).exists() or (
        run_dir / checkpoint.CHECKPOINT_DIR
    ).exists()
    if resume and not (run_dir / checkpoint.CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(
            f"No checkpoint to resume in {str(run_dir)!r}; start the run without --resume."
        )
    if exists and not resume:
        if not overwrite:
            raise ValueError(
                f"{str(run_dir)!r} already contains a training run; pass --resume to continue "
                "it, --overwrite to replace it, or choose another --out directory."
            )
        logger.warning("Overwriting the run in %s.", run_dir)
        shutil.rmtree(run_dir / checkpoint.CHECKPOINT_DIR, ignore_errors=True)
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)


def _build_run(
    data_path: str | Path,
    run_dir: Path,
    settings: TrainSettings,
    preset_name: str,
    model_overrides: Mapping[str, Any] | None,
    resume: bool,
) -> _Run:
    if resume:
        config = checkpoint.read_config(run_dir)
        dataset = load_text_dataset(data_path, checkpoint.read_tokenizer(run_dir))
    else:
        dataset = load_text_dataset(data_path)
        overrides = dict(model_overrides or {})
        overrides.setdefault("vocab_size", dataset.tokenizer.vocab_size)
        config = preset(preset_name, **overrides)
    _check_vocabulary(config, dataset)

    run = _init_state(config, settings, dataset)
    if resume:
        _restore(run, run_dir)
    else:
        checkpoint.write_run_files(
            run_dir, config, dataset.tokenizer, settings, dataset.validation_ids
        )
    _log_setup(run)
    return run


def _init_state(config: GPT2Config, settings: TrainSettings, dataset: TextDataset) -> _Run:
    """Build the mesh, place fresh params and optimizer state on it, and jit the steps."""
    mesh = sharding.make_mesh(settings.mesh)
    sharding.check_batch_size(settings.batch_size, mesh)
    optimizer = make_optimizer(settings)
    params = init_params(config, jax.random.key(settings.seed))
    _check_parameter_count(config, params)

    param_shardings = sharding.param_shardings(config, params, mesh)
    opt_shardings = sharding.optimizer_shardings(optimizer, params, param_shardings, mesh)
    params = jax.device_put(params, param_shardings)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    batch_sharding = sharding.batch_sharding(mesh)
    steps = make_step_functions(
        config, optimizer, mesh, param_shardings, opt_shardings, batch_sharding
    )

    sampler = BatchSampler(
        dataset.train_ids, settings.batch_size, config.context_length, settings.seed
    )
    return _Run(
        config, settings, dataset, mesh, steps, batch_sharding, params, opt_state, 0, sampler
    )


def _check_vocabulary(config: GPT2Config, dataset: TextDataset) -> None:
    if config.vocab_size != dataset.tokenizer.vocab_size:
        raise ValueError(
            f"The model's vocab_size={config.vocab_size} differs from the tokenizer's "
            f"{dataset.tokenizer.vocab_size} characters; leave vocab_size unset."
        )
    if config.context_length >= len(dataset.validation_ids):
        raise ValueError(
            f"The validation split has {len(dataset.validation_ids)} tokens, too few for "
            f"windows of context_length={config.context_length}; use a longer text."
        )


def _check_parameter_count(config: GPT2Config, params: Any) -> None:
    actual = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    if actual != config.num_parameters():
        raise RuntimeError(
            f"GPT2Config.num_parameters() = {config.num_parameters()} but the model has "
            f"{actual} parameters; the formula and the model disagree."
        )


def _restore(run: _Run, run_dir: Path) -> None:
    params, opt_state, step, rng_state = checkpoint.restore_training(
        run_dir, _abstract(run.params), _abstract(run.opt_state)
    )
    run.params, run.opt_state, run.start_step = params, opt_state, step
    run.sampler.set_state(rng_state)
    # The saved settings may differ (more steps, say); the run now follows the new ones.
    (run_dir / checkpoint.SETTINGS_FILE).write_text(run.settings.to_json())
    logger.info("Resumed %s at step %d.", run_dir, step)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _log_setup(run: _Run) -> None:
    logger.info("Model config: %s", run.config.to_dict())
    logger.info("Train settings: %s", dataclasses.asdict(run.settings))
    logger.info("Devices: %d x %s", jax.device_count(), jax.devices()[0].device_kind)
    logger.info("Mesh: %s", dict(run.mesh.shape))
    logger.info("Parameters: %s", f"{run.config.num_parameters():,}")


def _loop(run: _Run, run_dir: Path) -> tuple[float, float]:
    """Train from `run.start_step` to `settings.steps`; return the last (train, val) losses."""
    settings = run.settings
    if settings.peak_flops is None:
        peak = measure_peak_flops()
        logger.info("MFU denominator: %.3g FLOP/s, measured with a float32 matmul.", peak)
    else:
        peak = settings.peak_flops
        logger.info("MFU denominator: %.3g FLOP/s, from the settings.", peak)
    writer = MetricsWriter(run_dir / "metrics.jsonl", keep_through_step=run.start_step)
    losses = (float("nan"), float("nan"))

    with logging_redirect_tqdm(), checkpoint.checkpoint_manager(run_dir) as manager:
        bar = tqdm(range(run.start_step + 1, settings.steps + 1), desc="train", unit="step")
        for step in bar:
            record = _train_one_step(run, step, peak)
            if step % settings.eval_interval == 0 or step == settings.steps:
                losses = _estimate_losses(run, step)
                record["train_loss_estimate"], record["val_loss"] = losses
            writer.write(record)
            _log_step(record, step, run.start_step, settings)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % settings.checkpoint_interval == 0 or step == settings.steps:
                checkpoint.save_run(
                    manager, step, run.params, run.opt_state, run.sampler.get_state()
                )

    if run.start_step >= settings.steps:
        logger.info("The run already reached step %d; nothing to train.", run.start_step)
        losses = _estimate_losses(run, run.start_step)
    return losses


def _train_one_step(run: _Run, step: int, peak_flops: float) -> dict[str, Any]:
    """Run optimizer step `step` (counted from 1) and return its metrics record."""
    start = time.perf_counter()
    inputs, targets = run.sampler.sample()
    # Folding the step into one key gives each step its own dropout masks, also after resume.
    dropout_key = jax.random.fold_in(jax.random.key(run.settings.seed + 1), step)
    run.params, run.opt_state, stats = run.steps.train(
        run.params,
        run.opt_state,
        jax.device_put(inputs, run.batch_sharding),
        jax.device_put(targets, run.batch_sharding),
        dropout_key,
    )
    loss, grad_norm = float(stats["loss"]), float(stats["grad_norm"])  # waits for the step
    seconds = time.perf_counter() - start
    tokens = run.settings.batch_size * run.config.context_length
    return {
        "step": step,
        "loss": loss,
        # Optax counts updates from 0, so step s used the learning rate at count s - 1.
        "lr": float(make_schedule(run.settings)(step - 1)),
        "grad_norm": grad_norm,
        "tokens_per_s": tokens / seconds,
        "ms_per_step": 1000 * seconds,
        "mfu": flops_per_token(run.config) * tokens / seconds / peak_flops,
    }


def _log_step(record: dict[str, Any], step: int, start_step: int, settings: TrainSettings) -> None:
    if step - start_step <= FIRST_STEPS_LOGGED or step % settings.log_interval == 0:
        logger.info(
            "step %d: loss %.4f, lr %.2e, grad norm %.3f, %.0f tokens/s, %.1f ms/step, MFU %.2f%%",
            step,
            record["loss"],
            record["lr"],
            record["grad_norm"],
            record["tokens_per_s"],
            record["ms_per_step"],
            100 * record["mfu"],
        )
    if "val_loss" in record:
        logger.info(
            "step %d: train loss estimate %.4f, validation loss %.4f",
            step,
            record["train_loss_estimate"],
            record["val_loss"],
        )


def _estimate_losses(run: _Run, step: int) -> tuple[float, float]:
    """Mean loss over `eval_batches` random windows of each split, without dropout.

    The windows come from a generator seeded by (seed, step), so the estimate does not
    depend on the training sampler's state and a resumed run gets the same numbers.
    """
    results = []
    for split, ids in enumerate((run.dataset.train_ids, run.dataset.validation_ids)):
        seed = (run.settings.seed, step, split)
        sampler = BatchSampler(ids, run.settings.batch_size, run.config.context_length, seed)
        total = 0.0
        for _ in range(run.settings.eval_batches):
            inputs, targets = sampler.sample()
            total += float(
                run.steps.evaluate(
                    run.params,
                    jax.device_put(inputs, run.batch_sharding),
                    jax.device_put(targets, run.batch_sharding),
                )
            )
        results.append(total / run.settings.eval_batches)
    return results[0], results[1]


def _write_sample(run: _Run, run_dir: Path) -> str:
    if run.settings.sample_chars == 0:
        return ""
    tokenizer = run.dataset.tokenizer
    prompt = tokenizer.encode("\n") if "\n" in tokenizer.chars else np.zeros(1, np.int32)
    params = jax.device_get(run.params)
    ids = sample_tokens(
        run.config, params, prompt, run.settings.sample_chars, seed=run.settings.seed
    )
    text = tokenizer.decode(ids)
    (run_dir / "sample.txt").write_text(text, encoding="utf-8")
    logger.info("Sample (temperature 0.8, top-k 200):\n%s", text)
    return text


def last_validation_loss(run_dir: str | Path) -> float | None:
    """Return the last `val_loss` in a run's metrics.jsonl, or None if there is none."""
    values = [
        r["val_loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "val_loss" in r
    ]
    return values[-1] if values else None
