"""The Penzai twin's own layers against the stock Penzai layers they replace."""

import jax.numpy as jnp
import numpy as np
from penzai import pz

from gpt2_spec import axes as ax
from penzai_gpt2.model import MASKED_OUT_VALUE, CausalAttentionMask


def test_causal_mask_matches_penzai(rng):
    scores = pz.nx.wrap(jnp.asarray(rng.standard_normal((2, 4, 6, 6)), jnp.float32)).tag(
        ax.BATCH, ax.HEADS, ax.SEQ, ax.KV_SEQ
    )
    # Row 1 is left-padded by two tokens.
    positions = np.array([np.arange(6), [-1, -1, 0, 1, 2, 3]], np.int32)
    side_inputs = {"token_positions": pz.nx.wrap(jnp.asarray(positions)).tag(ax.BATCH, ax.SEQ)}
    stock = pz.nn.ApplyCausalAttentionMask(masked_out_value=MASKED_OUT_VALUE)
    ours = CausalAttentionMask(masked_out_value=MASKED_OUT_VALUE)
    order = (ax.BATCH, ax.HEADS, ax.SEQ, ax.KV_SEQ)
    expected = np.asarray(stock(scores, **side_inputs).unwrap(*order))
    actual = np.asarray(ours(scores, **side_inputs).unwrap(*order))
    np.testing.assert_array_equal(actual, expected)
    assert (actual[1, :, 3, :2] == MASKED_OUT_VALUE).all()  # padding keys are masked
    assert (actual[0, :, 2, 3:] == MASKED_OUT_VALUE).all()  # future keys are masked
    assert isinstance(ours, pz.nn.ApplyCausalAttentionMask)  # selectors still find it
