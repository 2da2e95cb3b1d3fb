"""Run directories: orbax checkpoints of training state plus the JSON files needed to reload.

Layout of a run directory:
  config.json          GPT2Config.to_json()
  tokenizer.json       CharTokenizer.to_json()
  train_settings.json  TrainSettings.to_json()
  validation_ids.npy   int32 token ids of the validation split
  checkpoints/<step>/  orbax items `params`, `opt_state` (a list of leaves) and `meta`
                       (step and the data sampler's RNG state)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from flax_gpt2.params import init_params
from flax_gpt2.settings import TrainSettings
from gpt2_spec import CharTokenizer, GPT2Config

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "train_settings.json"
VALIDATION_FILE = "validation_ids.npy"
CHECKPOINT_DIR = "checkpoints"
MAX_CHECKPOINTS_KEPT = 3

# Errors orbax and tensorstore raise on missing, truncated or mismatched checkpoint files.
_RESTORE_ERRORS = (ValueError, KeyError, OSError, TypeError, RuntimeError)


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """Contents of a run directory needed for inference.

    Attributes:
      config: The model architecture.
      params: Flax param tree of float32 numpy arrays, unsharded.
      tokenizer: The character tokenizer the model was trained with, or None for a run
        imported from Hugging Face with a BPE tokenizer or none.
      step: The training step of the checkpoint.
      validation_ids: Token ids of the validation split, or None if the file is missing.
      settings: The training settings, or None if the file is missing.
    """

    config: GPT2Config
    params: Any
    tokenizer: CharTokenizer | None
    step: int
    validation_ids: np.ndarray | None
    settings: TrainSettings | None = None


def checkpoint_manager(run_dir: str | Path, *, create: bool = True) -> ocp.CheckpointManager:
    """Open the orbax manager of `run_dir/checkpoints`, keeping the last few steps.

    Saves are synchronous: the state is small, and a finished `save_run` is then on disk.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=MAX_CHECKPOINTS_KEPT, create=create, enable_async_checkpointing=False
    )
    directory = (Path(run_dir) / CHECKPOINT_DIR).absolute()
    # Naming the handlers up front lets `item_metadata` read the stored shapes before a restore.
    handlers = {
        "params": ocp.StandardCheckpointHandler(),
        "opt_state": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def write_run_files(
    run_dir: str | Path,
    config: GPT2Config,
    tokenizer: CharTokenizer,
    settings: TrainSettings,
    validation_ids: np.ndarray,
) -> None:
    """Write the JSON and numpy files that describe a run (everything but the state)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.to_json())
    (run_dir / TOKENIZER_FILE).write_text(tokenizer.to_json())
    (run_dir / SETTINGS_FILE).write_text(settings.to_json())
    np.save(run_dir / VALIDATION_FILE, np.asarray(validation_ids, np.int32))


def save_run(
    manager: ocp.CheckpointManager,
    step: int,
    params: Any,
    opt_state: Any,
    data_rng_state: dict[str, Any],
) -> None:
    """Save params, optimizer state, step and data RNG state as checkpoint `step`."""
    meta = {"step": int(step), "data_rng_state": data_rng_state}
    manager.save(
        int(step),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(jax.tree.leaves(opt_state)),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    manager.wait_until_finished()
    logger.info("Saved checkpoint at step %d to %s.", step, manager.directory)


def restore_training(
    run_dir: str | Path, abstract_params: Any, abstract_opt_state: Any
) -> tuple[Any, Any, int, dict[str, Any]]:
    """Restore the latest training state onto the shardings given by the abstract trees.

    Returns:
      (params, opt_state, step, data_rng_state).

    Raises:
      FileNotFoundError: if the run has no checkpoint.
      ValueError: if the checkpoint is unreadable or does not match the trees.
    """
    with checkpoint_manager(run_dir, create=False) as manager:
        step = _latest_step(manager, run_dir)
        leaves, treedef = jax.tree.flatten(abstract_opt_state)
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(leaves),
            meta=ocp.args.JsonRestore(),
        )
        restored = _restore(manager, step, args, run_dir)
    opt_state = jax.tree.unflatten(treedef, restored.opt_state)
    return restored.params, opt_state, step, restored.meta["data_rng_state"]


def load_run(run_dir: str | Path) -> RunCheckpoint:
    """Load a run's latest params, config and tokenizer for inference on one device.

    Raises:
      FileNotFoundError: if `run_dir` contains no checkpoint.
      ValueError: if a file is corrupt or truncated, or the params do not match the config.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(
            f"No checkpoint in {str(run_dir)!r}; run `gpt2-twins train --out {run_dir}` first."
        )
    config = read_config(run_dir)
    tokenizer = read_tokenizer(run_dir, required=False)
    settings = read_settings(run_dir) if (run_dir / SETTINGS_FILE).is_file() else None
    abstract = _single_device_params(config)
    with checkpoint_manager(run_dir, create=False) as manager:
        step = _latest_step(manager, run_dir)
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        restored = _restore(manager, step, args, run_dir)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), restored.params)
    return RunCheckpoint(config, params, tokenizer, step, read_validation_ids(run_dir), settings)


def read_tokenizer(run_dir: str | Path, *, required: bool = True) -> CharTokenizer | None:
    """Read the character tokenizer in `tokenizer.json` of a run.

    A run imported from Hugging Face may carry a BPE `tokenizer.json` (which
    `bridge.sources` reads) or none at all. With `required=False` both cases return None;
    with `required=True`, as training needs, they raise.
    """
    path = Path(run_dir) / TOKENIZER_FILE
    if not required and not path.is_file():
        return None
    try:
        values = json.loads(_read_text(path))
        if not required and isinstance(values, dict) and values.get("kind") != CharTokenizer.kind:
            return None
        return CharTokenizer.from_json(json.dumps(values))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Invalid tokenizer file {str(path)!r}: {error}; training needs the character "
            "tokenizer the run was started with."
        ) from error


def read_settings(run_dir: str | Path) -> TrainSettings:
    """Read `train_settings.json` of a run."""
    path = Path(run_dir) / SETTINGS_FILE
    try:
        return TrainSettings.from_json(_read_text(path))
    except (ValueError, TypeError) as error:
        raise ValueError(f"Invalid train settings file {str(path)!r}: {error}") from error


def read_config(run_dir: str | Path) -> GPT2Config:
    """Read `config.json` of a run."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return GPT2Config.from_dict(_read_json(path))
    except TypeError as error:
        raise ValueError(f"Invalid model config file {str(path)!r}: {error}") from error


def read_validation_ids(run_dir: str | Path) -> np.ndarray | None:
    """Read `validation_ids.npy` of a run, or None if it is missing."""
    path = Path(run_dir) / VALIDATION_FILE
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False).astype(np.int32)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"Corrupt validation ids file {str(path)!r}: {error}") from error


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing; the run directory is incomplete. Train again with "
            f"`gpt2-twins train --out {path.parent}`."
        )
    return path.read_text(encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"Corrupt or truncated JSON file {str(path)!r}: {error}.") from error
    if not isinstance(values, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(values).__name__}.")
    return values


def _latest_step(manager: ocp.CheckpointManager, run_dir: str | Path) -> int:
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"No checkpoint in {str(run_dir)!r}; run `gpt2-twins train --out {run_dir}` first."
        )
    return step


def _check_param_shapes(
    manager: ocp.CheckpointManager, step: int, abstract_params: Any, run_dir: str | Path
) -> None:
    """Raise a ValueError naming the first parameter whose stored shape differs from the
    config's, before orbax starts (and abandons) the array reads."""
    try:
        stored = manager.item_metadata(step)["params"]
        stored_shapes = {
            _param_name(path): tuple(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(
                jax.tree.map(lambda x: x.shape, stored), is_leaf=lambda x: isinstance(x, tuple)
            )
        }
    except _RESTORE_ERRORS as error:
        raise ValueError(
            f"Cannot read the metadata of checkpoint step {step} in "
            f"{str(Path(run_dir) / CHECKPOINT_DIR)!r}; the files are corrupt or truncated "
            f"({_short(error)})."
        ) from error
    mismatch = f"Checkpoint step {step} in {str(Path(run_dir))!r} does not match config.json"
    expected = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
        name = _param_name(path)
        expected[name] = tuple(leaf.shape)
        if name not in stored_shapes:
            raise ValueError(f"{mismatch}: parameter {name} is missing from the checkpoint.")
        if stored_shapes[name] != expected[name]:
            raise ValueError(
                f"{mismatch}: parameter {name} has shape {stored_shapes[name]} in the "
                f"checkpoint but the config expects {expected[name]}."
            )
    extra = sorted(set(stored_shapes) - set(expected))
    if extra:
        raise ValueError(f"{mismatch}: the checkpoint has extra parameters {extra[:3]}.")


def _restore(manager: ocp.CheckpointManager, step: int, args: Any, run_dir: str | Path) -> Any:
    _check_param_shapes(manager, step, args["params"].item, run_dir)
    try:
        return manager.restore(step, args=args)
    except _RESTORE_ERRORS as error:
        raise ValueError(
            f"Cannot restore checkpoint step {step} from "
            f"{str(Path(run_dir) / CHECKPOINT_DIR / str(step))!r}: the files are corrupt, "
            f"truncated or do not match config.json ({_short(error)})."
        ) from error


def _param_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(entry, "key", entry)) for entry in path)


def _short(error: Exception) -> str:
    """Name an orbax or tensorstore error without its JSON store spec, often 2,000 characters."""
    text = str(error).split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {text[:300]}"


def _single_device_params(config: GPT2Config) -> Any:
    """Abstract float32 params placed on the first device, whatever mesh saved them."""
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    device = SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, np.float32, sharding=device), shapes
    )
