"""Byte-level BPE tokenizers read from a local `tokenizer.json`, behind `gpt2_spec.Tokenizer`.

The character tokenizer of a training run is written beside an exported model as
`char_tokenizer.json`, a name Hugging Face does not read, so `AutoTokenizer` never takes
it for a BPE file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers

from gpt2_spec import CharTokenizer, Tokenizer

logger = logging.getLogger(__name__)

BPE_FILE = "tokenizer.json"
CHAR_FILE = "char_tokenizer.json"


class BPETokenizer:
    """A `tokenizers.Tokenizer` (byte-level BPE for GPT-2) with int32 numpy ids.

    Attributes:
      backend: The wrapped `tokenizers.Tokenizer`.
    """

    kind = "bpe"

    def __init__(self, backend: tokenizers.Tokenizer):
        self.backend = backend

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        """Read a `tokenizer.json`.

        Raises:
          FileNotFoundError: if the file is missing.
          ValueError: if the `tokenizers` library cannot parse it.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Tokenizer file {path} not found.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a bare Exception
            raise ValueError(
                f"{path} is not a valid tokenizer.json ({error}); restore it or delete it to "
                "use the model with token ids."
            ) from None
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """Return the int32 token ids of `text`, without added special tokens.

        Raises:
          ValueError: naming the first character no token covers. A BPE model without an
            unknown token drops bytes missing from its vocabulary, which would otherwise
            lose text silently.
        """
        encoding = self.backend.encode(text, add_special_tokens=False)
        covered = np.zeros(len(text), dtype=bool)
        for start, end in encoding.offsets:
            covered[start:end] = True
        if not covered.all():
            position = int(np.argmin(covered))
            raise ValueError(
                f"Character {text[position]!r} at position {position} is not in the BPE "
                "tokenizer's vocabulary and would be dropped; remove it from the text."
            )
        return np.asarray(encoding.ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Return the text of `ids`.

        Raises:
          ValueError: if an id is outside [0, vocab_size).
        """
        flat = np.asarray(ids).reshape(-1).tolist()
        for token in flat:
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"Token id {token} is outside [0, {self.vocab_size}) for this tokenizer."
                )
        return self.backend.decode(flat, skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as a `tokenizer.json`."""
        self.backend.save(str(path))


def load_folder_tokenizer(folder: Path) -> Tokenizer | None:
    """Read `tokenizer.json` (BPE) or `char_tokenizer.json` from `folder`, or return None.

    Raises:
      ValueError: if both files exist (ambiguous) or one is corrupt.
    """
    bpe_path, char_path = folder / BPE_FILE, folder / CHAR_FILE
    if bpe_path.is_file() and char_path.is_file():
        raise ValueError(
            f"{folder} has both {BPE_FILE} and {CHAR_FILE}; delete the one the model was "
            "not trained with."
        )
    if bpe_path.is_file():
        return BPETokenizer.from_file(bpe_path)
    if char_path.is_file():
        try:
            return CharTokenizer.from_json(char_path.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{char_path} is not a valid character tokenizer: {error}") from None
    logger.info("No tokenizer in %s; the model takes and prints token ids.", folder)
    return None


def save_folder_tokenizer(tokenizer: Tokenizer | None, folder: Path) -> Path | None:
    """Write `tokenizer` into `folder` under the file name its kind uses; return the path.

    Raises:
      TypeError: for a tokenizer that is neither BPE nor character-level.
    """
    if tokenizer is None:
        return None
    if isinstance(tokenizer, BPETokenizer):
        path = folder / BPE_FILE
        tokenizer.save(path)
    elif isinstance(tokenizer, CharTokenizer):
        path = folder / CHAR_FILE
        path.write_text(tokenizer.to_json(), encoding="utf-8")
    else:
        raise TypeError(
            f"Cannot save a tokenizer of type {type(tokenizer).__name__}; expected "
            "BPETokenizer or CharTokenizer."
        )
    return path
