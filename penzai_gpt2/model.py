"""GPT-2 built natively from `pz.nn` layers, on the shared axis vocabulary.

The structure follows Penzai's `TransformerLM` conventions: token ids carry a `seq` axis,
the side input `token_positions` gives each token's position (-1 marks padding), and every
`pz.nn.Attention` can be swapped for `pz.nn.KVCachingAttention`. Only the parts where
GPT-2 differs from Penzai's stock layers are written here: the learned position table and
p-RoPE.

Parameter labels are the Flax twin's parameter paths with Penzai's suffixes (for example
`block_0/attn/query/Linear.weights` for `block_0/attn/query/kernel`), so conversion is a
table of suffixes, not a per-layer transpose.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts

from gpt2_spec import GPT2Config, rope_frequencies
from gpt2_spec import axes as ax

# Same constant as the Flax twin: finite, so fully masked (padding) rows stay NaN-free.
MASKED_OUT_VALUE = -2.3819763e38

POSITIONS_INPUT = "token_positions"
RANDOM_STREAM_INPUT = "random_stream"


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's GELU, the tanh approximation (`gelu_new` in Hugging Face)."""
    return jax.nn.gelu(x, approximate=True)


@pz.pytree_dataclass
class LearnedPositionEmbedding(pz.nn.Layer):
    """Looks up GPT-2's learned absolute position embeddings.

    The input only sets the call's shape; positions come from the side input. Padding
    positions (-1) read row 0, as Hugging Face does for left-padded batches.

    Attributes:
      table: Parameter with axes `seq` (context_length rows) and `embedding`.
      positions_input_name: Side input holding positions with axes `batch`, `seq`.
    """

    table: pz.nn.ParameterLike[pz.nx.NamedArray]
    positions_input_name: str = dataclasses.field(
        default=POSITIONS_INPUT, metadata={"pytree_node": False}
    )

    def __call__(self, value: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        positions = side_inputs[self.positions_input_name]
        table = self.table.value.untag(ax.SEQ)
        return pz.nx.nmap(lambda rows, pos: rows[jnp.maximum(pos, 0)])(table, positions)


@pz.pytree_dataclass
class ApplyPRoPE(pz.nn.Layer):
    """Rotates dimension pairs (i, i + d/2) of the `projection` axis by position x frequency.

    Frequencies past the kept fraction are zero, so those pairs pass through unchanged
    (p-RoPE). This is not Penzai's `ApplyRoPEToSubset`, which rotates a prefix of the
    dimensions with frequencies recomputed over that prefix.

    Attributes:
      frequencies: The d/2 angular frequencies, highest first.
      positions_input_name: Side input holding positions with axes `batch`, `seq`.
    """

    frequencies: tuple[float, ...] = dataclasses.field(metadata={"pytree_node": False})
    positions_input_name: str = dataclasses.field(
        default=POSITIONS_INPUT, metadata={"pytree_node": False}
    )

    def __call__(self, value: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        positions = side_inputs[self.positions_input_name]
        frequencies = jnp.asarray(self.frequencies, dtype=jnp.float32)

        def rotate(vector: jax.Array, position: jax.Array) -> jax.Array:
            angles = position.astype(jnp.float32) * frequencies
            sin, cos = jnp.sin(angles).astype(vector.dtype), jnp.cos(angles).astype(vector.dtype)
            first, second = jnp.split(vector, 2)
            return jnp.concatenate([first * cos - second * sin, second * cos + first * sin])

        return pz.nx.nmap(rotate)(value.untag(ax.PROJECTION), positions).tag(ax.PROJECTION)


@pz.pytree_dataclass(has_implicitly_inherited_fields=True)  # pytype: disable=wrong-keyword-args
class CausalAttentionMask(pz.nn.ApplyCausalAttentionMask):
    """Penzai's causal mask, with the scores passed to `nmap` before the mask.

    `pz.nn.ApplyCausalAttentionMask` passes the mask first, so the masked scores take the
    mask's axis order and XLA transposes them in every layer, forward and backward. Passing
    the scores first keeps their layout; the values are identical. As a subclass, selectors
    for Penzai's mask (such as the KV-cache conversion) still find this layer.
    """

    def __call__(self, scores: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        query_positions = side_inputs[self.query_positions_input_name]
        kv_positions = (
            side_inputs[self.kv_positions_input_name].untag(self.seq_axis).tag(self.kv_seq_axis)
        )
        keep = (query_positions >= kv_positions) & (kv_positions >= 0)
        masked_value = self.masked_out_value
        return pz.nx.nmap(lambda x, k: jnp.where(k, x, masked_value))(scores, keep)


def _dropout(rate: float) -> pz.nn.StochasticDropout:
    return pz.nn.StochasticDropout(drop_rate=rate, random_stream_input_name=RANDOM_STREAM_INPUT)


def _affine(name, rng, inputs: dict[str, int], outputs: dict[str, int]) -> pz.nn.Affine:
    return pz.nn.Affine.from_config(
        name=name, init_base_rng=rng, input_axes=inputs, output_axes=outputs
    )


def _layer_norm(name: str, rng, config: GPT2Config) -> pz.nn.LayerNorm:
    return pz.nn.LayerNorm.from_config(
        name=name,
        init_base_rng=rng,
        across_axes={ax.EMBEDDING: config.embedding_dim},
        epsilon=config.layer_norm_epsilon,
    )


def build_attention(name: str, rng, config: GPT2Config) -> pz.nn.Attention:
    """Build causal self-attention: q, k, v projections, (p-RoPE), masked softmax, output."""
    embedding = {ax.EMBEDDING: config.embedding_dim}
    per_head = {ax.HEADS: config.num_heads, ax.PROJECTION: config.projection_dim}
    rope = []
    if config.position_encoding == "p-rope":
        rope = [ApplyPRoPE(frequencies=tuple(float(f) for f in rope_frequencies(config)))]
    scale = jnp.asarray(config.projection_dim**-0.5, dtype=jnp.float32)
    query_spec = {ax.SEQ: "t", ax.HEADS: "h", ax.PROJECTION: "p"}
    key_spec = {ax.SEQ: "s", ax.HEADS: "h", ax.PROJECTION: "p"}
    scores_spec = {ax.SEQ: "t", ax.HEADS: "h", ax.KV_SEQ: "s"}
    return pz.nn.Attention(
        input_to_query=pz.nn.Sequential(
            [
                _affine(f"{name}/query", rng, embedding, per_head),
                *rope,
                pz.nn.ConstantRescale(scale),
            ]
        ),
        input_to_key=pz.nn.Sequential([_affine(f"{name}/key", rng, embedding, per_head), *rope]),
        input_to_value=pz.nn.Sequential([_affine(f"{name}/value", rng, embedding, per_head)]),
        query_key_to_attn=pz.nn.Sequential(
            [
                pz.nn.NamedEinsum((query_spec, key_spec), scores_spec),
                CausalAttentionMask(masked_out_value=MASKED_OUT_VALUE),
                pz.nn.Softmax(ax.KV_SEQ),
                _dropout(config.attention_dropout),
            ]
        ),
        attn_value_to_output=pz.nn.Sequential(
            [
                pz.nn.NamedEinsum((scores_spec, key_spec), query_spec),
                _affine(f"{name}/out", rng, per_head, embedding),
            ]
        ),
    )


def build_mlp(name: str, rng, config: GPT2Config) -> model_parts.TransformerFeedForward:
    """Build the MLP: `embedding` -> `neurons`, tanh GELU, `neurons` -> `embedding`."""
    embedding = {ax.EMBEDDING: config.embedding_dim}
    neurons = {ax.NEURONS: config.mlp_hidden_dim}
    return model_parts.TransformerFeedForward(
        [
            _affine(f"{name}/fc", rng, embedding, neurons),
            pz.nn.Elementwise(gelu_tanh),
            _affine(f"{name}/proj", rng, neurons, embedding),
        ]
    )


def build_block(name: str, rng, config: GPT2Config) -> model_parts.TransformerBlock:
    """Build one pre-LayerNorm block: two residual branches, each ending in dropout."""
    attention_branch = pz.nn.Sequential(
        [
            _layer_norm(f"{name}/ln_1", rng, config),
            build_attention(f"{name}/attn", rng, config),
            _dropout(config.residual_dropout),
        ]
    )
    mlp_branch = pz.nn.Sequential(
        [
            _layer_norm(f"{name}/ln_2", rng, config),
            build_mlp(f"{name}/mlp", rng, config),
            _dropout(config.residual_dropout),
        ]
    )
    return model_parts.TransformerBlock(
        [pz.nn.Residual(attention_branch), pz.nn.Residual(mlp_branch)]
    )


def _position_table(rng, config: GPT2Config):
    shape = (config.context_length, config.embedding_dim)

    def initializer(key):
        return pz.nx.wrap(0.01 * jax.random.normal(key, shape)).tag(ax.SEQ, ax.EMBEDDING)

    return pz.nn.make_parameter("wpe.embeddings", rng, initializer)


def build_gpt2(
    config: GPT2Config, init_base_rng: jax.Array | None = None
) -> model_parts.TransformerLM:
    """Build the Penzai twin.

    Args:
      config: The architecture.
      init_base_rng: Key for Penzai's own initializers. `None` leaves parameter slots to
        fill with `pz.bind_variables` (what the bridge does with converted weights).

    Returns:
      A `TransformerLM` whose body maps token ids {batch, seq} to logits
      {batch, seq, vocabulary}. Dropout layers are active and need a `random_stream`
      side input; `penzai_gpt2.dropout` disables or removes them.
    """
    rng = init_base_rng
    token_table = pz.nn.EmbeddingTable.from_config(
        name="wte",
        init_base_rng=rng,
        vocab_size=config.vocab_size,
        embedding_axes={ax.EMBEDDING: config.embedding_dim},
        vocabulary_axis=ax.VOCABULARY,
    )
    layers: list[pz.nn.Layer] = [pz.nn.EmbeddingLookup(token_table)]
    if config.position_encoding == "learned":
        position_lookup = LearnedPositionEmbedding(table=_position_table(rng, config))
        layers.append(pz.nn.BranchAndAddTogether([pz.nn.Identity(), position_lookup]))
    layers.append(_dropout(config.embedding_dropout))
    layers.extend(build_block(f"block_{i}", rng, config) for i in range(config.num_layers))
    layers.append(_layer_norm("ln_f", rng, config))
    layers.append(pz.nn.EmbeddingDecode(token_table))
    metadata = model_parts.TransformerMetadata(
        common_head_axes={ax.HEADS: config.num_heads},
        query_only_head_axes={},
        embedding_dim=config.embedding_dim,
        projection_dim=config.projection_dim,
        mlp_hidden_dim=config.mlp_hidden_dim,
        vocab_size=config.vocab_size,
        activation_dtype=jnp.float32,
    )
    return model_parts.TransformerLM(body=pz.nn.Sequential(layers), metadata=metadata)
