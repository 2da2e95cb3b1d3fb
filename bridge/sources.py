"""Load a model from wherever the user points: a training run directory or a Hugging Face
GPT-2 folder. Every CLI command that takes a model goes through `load_model_source`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gpt2_spec import GPT2Config, Tokenizer


@dataclasses.dataclass
class ModelSource:
    """A loaded model, as Flax twin parameters plus what is needed to use it.

    Attributes:
      config: The architecture.
      params: The Flax twin's parameter tree (the bridge converts it for Penzai).
      tokenizer: Text <-> ids, or None when the source has no tokenizer (then callers
        take and print token ids).
      eos_id: End-of-sequence id, or None when the source defines none.
      path: Where it was loaded from.
      kind: `run` for a training run directory, `hf` for a Hugging Face folder.
      validation_ids: Held-out token ids saved with a training run, or None.
    """

    config: GPT2Config
    params: dict[str, Any]
    tokenizer: Tokenizer | None
    eos_id: int | None
    path: Path
    kind: Literal["run", "hf"]
    validation_ids: np.ndarray | None = None


def is_hf_folder(path: Path) -> bool:
    """Return whether `path` looks like a Hugging Face folder, even one missing its weights.

    A run directory's `config.json` contains `GPT2Config` field names, and a Hugging
    Face one contains `model_type` or `n_embd`.
    """
    config_path = path / "config.json"
    if not config_path.is_file():
        return False
    if (path / "model.safetensors").is_file():
        return True
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(values, dict) and ("model_type" in values or "n_embd" in values)


def load_model_source(path: str | Path) -> ModelSource:
    """Load a run directory or a Hugging Face GPT-2 folder.

    Raises:
      FileNotFoundError: if `path` does not exist or contains neither kind of checkpoint.
      ValueError: if the checkpoint is corrupt or uses unsupported settings.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a run directory written by `gpt2-twins train` "
            "or a Hugging Face GPT-2 folder (config.json + model.safetensors)."
        )
    if is_hf_folder(path):
        from bridge.hf import load_hf_source

        return load_hf_source(path)
    from flax_gpt2.checkpoint import load_run

    run = load_run(path)
    tokenizer = run.tokenizer
    if tokenizer is None:
        from bridge.tokenizers import load_folder_tokenizer

        tokenizer = load_folder_tokenizer(path)  # a BPE tokenizer.json, or None
    return ModelSource(
        config=run.config,
        params=run.params,
        tokenizer=tokenizer,
        eos_id=None,
        path=path,
        kind="run",
        validation_ids=run.validation_ids,
    )
