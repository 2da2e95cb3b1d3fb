"""Character-level training data: read a text file, split it, and sample random windows."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_spec import CharTokenizer

logger = logging.getLogger(__name__)

# Fraction of the token ids, counted from the start of the file, that go to training.
TRAIN_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """A tokenized corpus split into a training and a validation part.

    Attributes:
      tokenizer: The character tokenizer built from the whole file.
      train_ids: int32 token ids of the first 90% of the file.
      validation_ids: int32 token ids of the remaining 10%.
    """

    tokenizer: CharTokenizer
    train_ids: np.ndarray
    validation_ids: np.ndarray


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file.

    Raises:
      FileNotFoundError: if `path` is not a file.
      ValueError: if the file is empty or is not valid UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Training text {str(path)!r} not found. Pass --data with a UTF-8 text file, for "
            "example tiny-shakespeare's input.txt from the karpathy/char-rnn repository."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Training text {str(path)!r} is not valid UTF-8 ({error}); convert it to UTF-8."
        ) from error
    if not text:
        raise ValueError(f"Training text {str(path)!r} is empty; give a file with some text.")
    return text


def load_text_dataset(path: str | Path, tokenizer: CharTokenizer | None = None) -> TextDataset:
    """Read, tokenize and split a text file: the first 90% trains, the rest validates.

    Args:
      path: A UTF-8 text file.
      tokenizer: A tokenizer to reuse (when resuming a run); by default one is built
        from every distinct character of the file.

    Raises:
      FileNotFoundError: if the file does not exist.
      ValueError: if the file is empty, not UTF-8, contains a character outside
        `tokenizer`, or is too short to split.
    """
    text = read_text(path)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    split = int(TRAIN_FRACTION * len(ids))
    if split < 2 or len(ids) - split < 2:
        raise ValueError(
            f"Training text {str(path)!r} has only {len(ids)} characters; a 90/10 split "
            "needs at least 20."
        )
    logger.info(
        "Read %s: %d characters, vocabulary %d, %d train / %d validation tokens.",
        path,
        len(ids),
        tokenizer.vocab_size,
        split,
        len(ids) - split,
    )
    return TextDataset(tokenizer, ids[:split], ids[split:])


class BatchSampler:
    """Draws random windows of a token array as (inputs, targets) batches.

    Window starts come from a numpy `Generator`. `get_state` and `set_state` save and
    restore it exactly, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(
        self, ids: np.ndarray, batch_size: int, context_length: int, seed: int | Sequence[int]
    ):
        if len(ids) <= context_length:
            raise ValueError(
                f"The token array has {len(ids)} tokens but a window needs "
                f"context_length + 1 = {context_length + 1}; use more text or a shorter context."
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.ids = np.asarray(ids, dtype=np.int32)
        self.batch_size = batch_size
        self.context_length = context_length
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Return int32 inputs [batch, seq] and next-token targets [batch, seq]."""
        starts = self.rng.integers(0, len(self.ids) - self.context_length, size=self.batch_size)
        offsets = starts[:, None] + np.arange(self.context_length)[None, :]
        return self.ids[offsets], self.ids[offsets + 1]

    def get_state(self) -> dict[str, Any]:
        """Return the generator state as a JSON-serializable dict."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from `get_state`.

        Raises:
          ValueError: if `state` belongs to another bit generator.
        """
        expected = type(self.rng.bit_generator).__name__
        if state.get("bit_generator") != expected:
            raise ValueError(
                f"Data RNG state is for {state.get('bit_generator')!r}, expected {expected!r}."
            )
        self.rng.bit_generator.state = state
