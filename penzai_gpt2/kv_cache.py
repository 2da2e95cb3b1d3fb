"""KV-cached mode of the Penzai twin, with token positions taken from an attention mask.

Penzai's own `KVCachingTransformerLM` treats every token equal to `pad_id` (0 by default)
as padding. Token 0 is a real token in our tokenizers, so this wrapper takes an explicit
attention mask instead and derives positions from it. A real token's position is the
number of real tokens before it in its row. Padding gets position -1, which the attention
mask layer never attends to and the learned position table reads as row 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts

from gpt2_spec import axes as ax
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.model import POSITIONS_INPUT

KV_POSITIONS_INPUT = "kv_token_positions"
CACHE_END_INDEX_INPUT = "cache_end_index"


def positions_from_mask(mask: pz.nx.NamedArray) -> pz.nx.NamedArray:
    """Return int32 positions {..., seq}: cumsum(mask) - 1 on real tokens, -1 on padding."""
    counts = pz.nx.nmap(jnp.cumsum)(mask.untag(ax.SEQ), dtype=jnp.int32).tag(ax.SEQ)
    return pz.nx.nmap(jnp.where)(mask, counts - 1, -1)


def _read_kv_positions_from_cache(masker: pz.nn.ApplyCausalAttentionMask):
    if masker.kv_positions_input_name != POSITIONS_INPUT:
        raise ValueError(
            f"Cannot add a KV cache to a mask layer that reads key positions from "
            f"{masker.kv_positions_input_name!r}; expected {POSITIONS_INPUT!r}."
        )
    return dataclasses.replace(masker, kv_positions_input_name=KV_POSITIONS_INPUT)


@pz.pytree_dataclass
class KVCachedGPT2(pz.nn.Layer):
    """The Penzai twin with a key/value cache in state variables.

    Each call appends its tokens to the cache at `cache_end_index` and returns their
    logits. Queries attend to every cached key whose position is valid and not later
    than their own.

    Attributes:
      body: The uncached model's body with every `pz.nn.Attention` replaced by a
        `pz.nn.KVCachingAttention` and dropout removed.
      cache_end_index: Number of cache slots already written (int32 scalar).
      kv_mask: Which cache slots hold real tokens, bool {batch, seq} of length
        `cache_len`.
      cache_len: Number of cache slots per row.
      batch_size: Number of rows the cache holds.
    """

    body: pz.nn.Layer
    cache_end_index: pz.StateVariable[jax.Array]
    kv_mask: pz.StateVariable[pz.nx.NamedArray]
    cache_len: int = dataclasses.field(metadata={"pytree_node": False})
    batch_size: int = dataclasses.field(metadata={"pytree_node": False})

    def __call__(
        self, tokens: pz.nx.NamedArray, attention_mask: pz.nx.NamedArray
    ) -> pz.nx.NamedArray:
        """Append tokens to the cache and return their logits.

        Args:
          tokens: int32 token ids {batch, seq}, already validated against the vocabulary.
          attention_mask: bool {batch, seq}, False on padding tokens.

        Returns:
          float32 logits {batch, seq, vocabulary}.
        """
        start = self.cache_end_index.value
        kv_mask = pz.nx.nmap(jax.lax.dynamic_update_slice)(
            self.kv_mask.value.untag(ax.SEQ), attention_mask.untag(ax.SEQ), (start,)
        ).tag(ax.SEQ)
        kv_positions = positions_from_mask(kv_mask)
        length = tokens.named_shape[ax.SEQ]
        query_positions = pz.nx.nmap(jax.lax.dynamic_slice)(
            kv_positions.untag(ax.SEQ), (start,), (length,)
        ).tag(ax.SEQ)
        logits = self.body(
            tokens,
            **{
                POSITIONS_INPUT: query_positions,
                KV_POSITIONS_INPUT: kv_positions,
                CACHE_END_INDEX_INPUT: start,
            },
        )
        self.kv_mask.value = kv_mask
        self.cache_end_index.value = start + length
        return logits

    @classmethod
    def from_uncached(
        cls,
        model: model_parts.TransformerLM,
        batch_size: int,
        cache_len: int,
        label_prefix: str = "kv_cache",
    ) -> KVCachedGPT2:
        """Build a cached model with an empty cache from the Penzai twin.

        Args:
          model: The twin from `penzai_gpt2.model.build_gpt2` (parameters bound or left
            as slots); its dropout layers are removed.
          batch_size: Number of rows the cache holds.
          cache_len: Number of cache slots per row.
          label_prefix: Prefix of the state variables' labels.
        """
        if cache_len <= 0 or batch_size <= 0:
            raise ValueError(
                f"batch_size and cache_len must be positive, got {batch_size} and {cache_len}."
            )
        body = remove_dropout(model.body)
        cached_axes = {
            ax.BATCH: batch_size,
            **model.metadata.common_head_axes,
            ax.PROJECTION: model.metadata.projection_dim,
        }
        selection = pz.select(body).at_instances_of(pz.nn.Attention)
        replacements = {}
        for index, (keypath, attention) in enumerate(selection.selected_by_path.items()):
            attention = (
                pz.select(attention)
                .at_instances_of(pz.nn.ApplyCausalAttentionMask)
                .apply(_read_kv_positions_from_cache)
            )
            replacements[keypath] = pz.nn.KVCachingAttention.from_uncached(
                attention,
                sequence_axis=ax.SEQ,
                cache_len=cache_len,
                cached_axes=cached_axes,
                cache_end_index_key=CACHE_END_INDEX_INPUT,
                cache_dtype=model.metadata.activation_dtype,
                cache_label=f"{label_prefix}/attention_{index}",
            )
        if not replacements:
            raise ValueError("The model has no pz.nn.Attention layer to add a KV cache to.")
        return cls(
            body=selection.set_by_path(replacements),
            cache_end_index=pz.StateVariable(
                value=jnp.zeros((), jnp.int32), label=f"{label_prefix}/cache_end_index"
            ),
            kv_mask=pz.StateVariable(
                value=pz.nx.zeros({ax.BATCH: batch_size, ax.SEQ: cache_len}, dtype=jnp.bool_),
                label=f"{label_prefix}/kv_mask",
            ),
            cache_len=cache_len,
            batch_size=batch_size,
        )
