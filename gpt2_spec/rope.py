"""p-RoPE frequencies (Barbero et al. 2024, "Round and Round We Go!"), framework-free.

For head width d, RoPE frequency k (k = 0 .. d/2 - 1) is theta^(-2k/d), highest first.
p-RoPE keeps the first r = floor(p * d/2) of them unchanged and sets the rest, the lowest,
to zero, so those dimension pairs are not rotated. Dimension i pairs with i + d/2 (the
split-half convention Gemma uses). This differs from GPT-NeoX's partial rotary, which
rotates a prefix of the dimensions and recomputes the frequencies over that prefix.
"""

from __future__ import annotations

import numpy as np

from gpt2_spec.config import GPT2Config


def rope_frequencies(config: GPT2Config) -> np.ndarray:
    """Return the d/2 angular frequencies (radians per position) as float32.

    Frequencies past the first `config.num_rotated_frequencies` are exactly zero.
    """
    half = config.projection_dim // 2
    exponents = 2.0 * np.arange(half, dtype=np.float64) / config.projection_dim
    frequencies = config.rope_theta ** (-exponents)
    frequencies[config.num_rotated_frequencies :] = 0.0
    return frequencies.astype(np.float32)
