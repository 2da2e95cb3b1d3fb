"""Analyses of a cached Penzai run: logit lens, residual decomposition, direct logit
attribution, and induction / previous-token head scores.

Every function reads an `ActivationCache` from `penzai_gpt2.cache.run_with_cache` and the
model's own parameters. Stacked results carry one extra named axis, `LAYER` or `COMPONENT`,
with a parallel list of labels.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from penzai import pz

from gpt2_spec import axes as ax
from penzai_gpt2.cache import ActivationCache, run_with_cache

LAYER = "layer"  # entries of the accumulated residual stream
COMPONENT = "component"  # terms that add up to the final residual stream


def _parameter(model: pz.nn.Layer, label: str) -> pz.nx.NamedArray:
    for param in pz.unbind_params(model)[1]:
        if param.label == label:
            return param.value
    raise ValueError(f"The model has no parameter {label!r}; is it the Penzai GPT-2 twin?")


def _final_layer_norm(model: pz.nn.Layer) -> pz.nn.LayerNorm:
    # The last LayerNorm in forward order is ln_f.
    return pz.select(model).at_instances_of(pz.nn.LayerNorm).get_sequence()[-1]


def _unembed(model: pz.nn.Layer) -> pz.nn.EmbeddingDecode:
    return pz.select(model).at_instances_of(pz.nn.EmbeddingDecode).get_sequence()[0]


def num_layers(cache: ActivationCache) -> int:
    """Return the number of blocks, counted from the cache's `hook_resid_post` entries."""
    count = sum(1 for name in cache if name.endswith(".hook_resid_post"))
    if count == 0:
        raise ValueError(
            "The cache contains no blocks.*.hook_resid_post; run run_with_cache with names=None "
            "or include the residual hooks."
        )
    return count


def accumulated_residual(
    cache: ActivationCache, include_mid: bool = False
) -> tuple[pz.nx.NamedArray, list[str]]:
    """Stack the residual stream entering each block and leaving the last one.

    Returns:
      A named array {layer, batch, seq, embedding} and its layer labels, from
      `blocks.0.hook_resid_pre` to the last `hook_resid_post`.
    """
    labels = []
    for i in range(num_layers(cache)):
        labels.append(f"blocks.{i}.hook_resid_pre")
        if include_mid:
            labels.append(f"blocks.{i}.hook_resid_mid")
    labels.append(f"blocks.{num_layers(cache) - 1}.hook_resid_post")
    return pz.nx.stack([cache[name] for name in labels], LAYER), labels


def logit_lens(
    model: pz.nn.Layer, cache: ActivationCache, include_mid: bool = False
) -> tuple[pz.nx.NamedArray, list[str]]:
    """Decode every entry of the accumulated residual stream with ln_f and the unembedding.

    ln_f recomputes its mean and variance for each entry, so the last entry gives exactly
    the model's logits.

    Returns:
      Logits {layer, batch, seq, vocabulary} and the layer labels.
    """
    residual, labels = accumulated_residual(cache, include_mid)
    normalized = _final_layer_norm(model)(residual)
    return _unembed(model)(normalized), labels


def decompose_residual(
    model: pz.nn.Layer, cache: ActivationCache
) -> tuple[pz.nx.NamedArray, list[str]]:
    """Split the final residual stream into the terms that add up to it.

    Terms: token embedding, position embedding (learned positions only), then each block's
    attention output and MLP output.

    Returns:
      A named array {component, batch, seq, embedding} and the component labels.
    """
    labels = ["hook_embed"]
    if "hook_pos_embed" in cache:
        labels.append("hook_pos_embed")
    for i in range(num_layers(cache)):
        labels += [f"blocks.{i}.hook_attn_out", f"blocks.{i}.hook_mlp_out"]
    return pz.nx.stack([cache[name] for name in labels], COMPONENT), labels


def head_results(model: pz.nn.Layer, cache: ActivationCache, layer: int) -> pz.nx.NamedArray:
    """Return each head's write into the residual stream, z @ W_O, without the output bias.

    Returns:
      A named array {batch, seq, heads, embedding}; summed over heads plus the bias it is
      `blocks.{layer}.hook_attn_out`.
    """
    w_out = _parameter(model, f"block_{layer}/attn/out/Linear.weights")
    z = cache[f"blocks.{layer}.attn.hook_z"]
    write = pz.nx.nmap(jnp.matmul)(z.untag(ax.PROJECTION), w_out.untag(ax.PROJECTION, ax.EMBEDDING))
    return write.tag(ax.EMBEDDING)


def logit_direction(model: pz.nn.Layer, answer: int, wrong: int | None = None) -> pz.nx.NamedArray:
    """Return the unembedding direction {embedding} of `answer`, minus that of `wrong`."""
    table = _parameter(model, "wte.embeddings")
    vocab = table.named_shape[ax.VOCABULARY]
    for token in (answer, wrong):
        if token is not None and not 0 <= token < vocab:
            raise ValueError(f"Token id {token} is outside the vocabulary [0, {vocab}).")
    direction = table[{ax.VOCABULARY: answer}]
    if wrong is not None:
        direction = direction - table[{ax.VOCABULARY: wrong}]
    return direction


def direct_logit_attribution(
    model: pz.nn.Layer,
    cache: ActivationCache,
    terms: pz.nx.NamedArray,
    direction: pz.nx.NamedArray,
) -> pz.nx.NamedArray:
    """Project residual-stream terms onto a logit direction through the final LayerNorm.

    The LayerNorm is linearised at the run's own final residual stream. Each term is
    centred, divided by that stream's standard deviation and multiplied by ln_f's scale,
    and ln_f's bias is left out. The attributions of terms therefore add up like the terms.

    Args:
      model: The Penzai twin the cache came from.
      cache: A cache holding the last block's `hook_resid_post`.
      terms: Named array with an `embedding` axis (and any others, such as `component`).
      direction: Named array {embedding}, for example from `logit_direction`.

    Returns:
      `terms` with the `embedding` axis contracted.
    """
    final = cache[f"blocks.{num_layers(cache) - 1}.hook_resid_post"].untag(ax.EMBEDDING)
    epsilon = _final_layer_norm(model).sublayers[0].epsilon
    std = pz.nx.nmap(lambda x: jnp.sqrt(jnp.var(x) + epsilon))(final)
    scale = _parameter(model, "ln_f/scale.weights")
    centered = terms - pz.nx.nmap(jnp.mean)(terms.untag(ax.EMBEDDING))
    scaled = centered * scale * direction / std
    return pz.nx.nmap(jnp.sum)(scaled.untag(ax.EMBEDDING))


def head_attribution(
    model: pz.nn.Layer, cache: ActivationCache, answer: int, wrong: int | None = None
) -> pz.nx.NamedArray:
    """Return each head's direct logit attribution {blocks, batch, seq, heads}."""
    direction = logit_direction(model, answer, wrong)
    per_layer = [
        direct_logit_attribution(model, cache, head_results(model, cache, layer), direction)
        for layer in range(num_layers(cache))
    ]
    return pz.nx.stack(per_layer, ax.BLOCKS)


def repeated_random_tokens(vocab_size: int, seq_len: int, batch: int, seed: int = 0) -> np.ndarray:
    """Return int32 ids [batch, 2 * seq_len]: a random sequence followed by itself."""
    first = np.random.default_rng(seed).integers(0, vocab_size, (batch, seq_len), dtype=np.int32)
    return np.concatenate([first, first], axis=1)


def induction_score(patterns: np.ndarray, seq_len: int) -> np.ndarray:
    """Return the mean attention from each token of the repeat to the token after its
    first occurrence.

    Args:
      patterns: Attention probabilities [..., query, key] on `repeated_random_tokens`.
      seq_len: Length of the repeated block.

    Returns:
      Scores in [0, 1] with the leading axes of `patterns`, averaged over the axis just
      before the query axis (batch) as well.
    """
    queries = np.arange(seq_len, 2 * seq_len)
    stripe = patterns[..., queries, queries - seq_len + 1]
    return stripe.mean(axis=(-2, -1))


def previous_token_score(patterns: np.ndarray) -> np.ndarray:
    """Return the mean attention from each token (after the first) to the one before it."""
    queries = np.arange(1, patterns.shape[-1])
    return patterns[..., queries, queries - 1].mean(axis=(-2, -1))


@dataclasses.dataclass(frozen=True)
class HeadScores:
    """Induction and previous-token scores of every head.

    Attributes:
      induction: Array [layer, head] of `induction_score`.
      previous_token: Array [layer, head] of `previous_token_score`.
      seq_len: Length of the repeated random block the scores were measured on.
      batch: Number of random sequences averaged over.
    """

    induction: np.ndarray
    previous_token: np.ndarray
    seq_len: int
    batch: int

    def top_heads(self, kind: str, threshold: float) -> list[tuple[int, int, float]]:
        """Return (layer, head, score) of heads scoring at least `threshold`, best first."""
        by_kind = {"induction": self.induction, "previous_token": self.previous_token}
        if kind not in by_kind:
            raise ValueError(f"kind must be 'induction' or 'previous_token', got {kind!r}.")
        scores = by_kind[kind]
        found = [
            (int(layer), int(head), float(scores[layer, head]))
            for layer, head in np.argwhere(scores >= threshold)
        ]
        return sorted(found, key=lambda item: -item[2])


def head_scores(
    model: pz.nn.Layer,
    seq_len: int,
    batch: int = 8,
    seed: int = 0,
    first_half: np.ndarray | None = None,
) -> HeadScores:
    """Measure induction and previous-token scores on a sequence followed by itself.

    Args:
      model: The Penzai twin.
      seq_len: Length of the repeated block; the model runs on 2 * seq_len tokens.
      batch: Number of random sequences (ignored with `first_half`).
      seed: Seed of the random tokens.
      first_half: Optional int ids [batch, seq_len] to repeat instead of random tokens,
        for example held-out text, which a small model finds less surprising.

    Raises:
      ValueError: if 2 * seq_len exceeds the model's context length, or `first_half` does
        not have seq_len columns.
    """
    if first_half is None:
        tokens = repeated_random_tokens(model.metadata.vocab_size, seq_len, batch, seed)
    else:
        first_half = np.asarray(first_half)
        if first_half.ndim != 2 or first_half.shape[1] != seq_len:
            raise ValueError(
                f"first_half must have shape [batch, {seq_len}], got {first_half.shape}."
            )
        tokens = np.concatenate([first_half, first_half], axis=1)
    cache = run_with_cache(model, tokens, "blocks.*.attn.hook_pattern").to_transformerlens()
    # [layer, batch, head, query, key] -> [layer, head, batch, query, key].
    patterns = np.stack(list(cache.values())).transpose(0, 2, 1, 3, 4)
    return HeadScores(
        induction=induction_score(patterns, seq_len),
        previous_token=previous_token_score(patterns),
        seq_len=seq_len,
        batch=tokens.shape[0],
    )
