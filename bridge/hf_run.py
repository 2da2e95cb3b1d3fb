"""Import a Hugging Face GPT-2 folder as a training run directory that `load_run` reads."""

from __future__ import annotations

import logging
from pathlib import Path

from bridge.hf import load_hf_source
from bridge.tokenizers import save_folder_tokenizer
from flax_gpt2 import checkpoint
from flax_gpt2.settings import TrainSettings
from flax_gpt2.train_step import make_optimizer
from gpt2_spec import CharTokenizer

logger = logging.getLogger(__name__)


def import_to_run(hf_dir: str | Path, out: str | Path) -> Path:
    """Write the model of a Hugging Face GPT-2 folder as checkpoint step 0 of a run directory.

    The run gets a fresh AdamW state (default `TrainSettings`), so training can continue
    from the imported weights, and no validation ids.

    The tokenizer is copied too. A character tokenizer becomes the run's `tokenizer.json`,
    and a BPE one is written as a Hugging Face `tokenizer.json`. A folder without a
    tokenizer gives a run without one.

    Raises:
      ValueError: if `out` is not empty.
    """
    source = load_hf_source(hf_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; choose a new --out folder.")
    out.mkdir(parents=True, exist_ok=True)
    (out / checkpoint.CONFIG_FILE).write_text(source.config.to_json())
    if isinstance(source.tokenizer, CharTokenizer):
        (out / checkpoint.TOKENIZER_FILE).write_text(source.tokenizer.to_json())
    elif source.tokenizer is not None:
        save_folder_tokenizer(source.tokenizer, out)  # a BPE tokenizer.json
    opt_state = make_optimizer(TrainSettings()).init(source.params)
    with checkpoint.checkpoint_manager(out) as manager:
        checkpoint.save_run(manager, 0, source.params, opt_state, {})
    logger.info("Imported %s into run directory %s", hf_dir, out)
    return out
