"""Character-level tokenizer: one token id per distinct character of a corpus."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class CharTokenizer:
    """Maps each character of a fixed alphabet to its index in the sorted alphabet.

    Attributes:
      chars: The alphabet, sorted by code point; token id i is `chars[i]`.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("A character tokenizer needs at least one character.")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("Tokenizer alphabet must be distinct single characters.")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the alphabet of every distinct character in `text`."""
        if not text:
            raise ValueError("Cannot build a tokenizer from empty text.")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Return the int32 token ids of `text`.

        Raises:
          ValueError: naming the first character outside the alphabet.
        """
        ids = np.empty(len(text), dtype=np.int32)
        for position, char in enumerate(text):
            token = self._ids.get(char)
            if token is None:
                raise ValueError(
                    f"Character {char!r} at position {position} of the prompt is not in "
                    f"the tokenizer's {self.vocab_size}-character vocabulary; remove it or "
                    f"use only these characters: {''.join(self.chars)!r}."
                )
            ids[position] = token
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Return the text of `ids`.

        Raises:
          ValueError: if an id is outside [0, vocab_size).
        """
        out = []
        for token in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"Token id {token} is outside [0, {self.vocab_size}) for this tokenizer."
                )
            out.append(self.chars[token])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": "".join(self.chars)})

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        data = json.loads(text)
        if data.get("kind") != cls.kind:
            raise ValueError(
                f"Expected a {cls.kind!r} tokenizer file, got kind {data.get('kind')!r}."
            )
        return cls(list(data["chars"]))


class Tokenizer(Protocol):
    """What generation, parity and inspection need from any tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...
