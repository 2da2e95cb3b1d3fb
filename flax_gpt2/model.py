"""GPT-2 as Flax Linen modules, with logical axis names on every parameter.

Einsum legend used throughout this module:
  b = batch, t = seq (queries), s = kv_seq (keys/values), d = embedding,
  h = heads, p = projection, n = neurons, v = vocabulary.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from gpt2_spec import GPT2Config, rope_frequencies
from gpt2_spec import axes as ax

# Score given to masked attention logits. A large finite value rather than -inf keeps
# fully masked rows (left padding) free of NaN; Gemma and Penzai use the same constant.
MASKED_OUT_VALUE = -2.3819763e38

Array = jax.Array


def _normal(stddev: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _constant(value: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.constant(value), names)


def _constrain(x: Array, names: tuple[str, ...], mesh: Mesh | None) -> Array:
    """Pin an activation's sharding by logical names; a no-op without a mesh."""
    if mesh is None:
        return x
    return nn.with_logical_constraint(x, names, rules=ax.SHARDING_RULES, mesh=mesh)


class DenseEinsum(nn.Module):
    """Dense layer written as one einsum over named parameter axes, plus a bias.

    Unlike `nn.DenseGeneral`, the kernel is created in its final shape, so its logical
    axis names also hold under a mesh.

    Attributes:
      equation: Einsum of the input and the kernel, e.g. "btd,dhp->bthp".
      kernel_shape: Kernel shape; its trailing `len(bias_axes)` sizes give the bias shape.
      kernel_axes: Logical axis names of the kernel.
      bias_axes: Logical axis names of the bias.
      stddev: Standard deviation of the normal kernel initializer.
    """

    equation: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...]
    stddev: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", _normal(self.stddev, self.kernel_axes), self.kernel_shape)
        bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes) :]
        bias = self.param("bias", _constant(0.0, self.bias_axes), bias_shape)
        return jnp.einsum(self.equation, x, kernel) + bias


class LayerNorm(nn.Module):
    """LayerNorm over the `embedding` axis, computed as `jax.nn.standardize` then scale and bias.

    Using `jax.nn.standardize` (the function Penzai's `Standardize` calls) keeps the two
    twins' rounding the same.
    """

    epsilon: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        scale = self.param("scale", _constant(1.0, (ax.EMBEDDING,)), (width,))
        bias = self.param("bias", _constant(0.0, (ax.EMBEDDING,)), (width,))
        normalized = jax.nn.standardize(x, axis=-1, epsilon=self.epsilon)
        normalized = self.hook_normalized(normalized)
        return normalized * scale + bias

    def hook_normalized(self, x: Array) -> Array:
        """Identity hook point for the value before scale and bias, as in TransformerLens."""
        return x


def apply_rope(x: Array, positions: Array, frequencies: Array) -> Array:
    """Rotate pairs (i, i + d/2) of `x` [b, t, h, p] by `positions` [b, t] x `frequencies`."""
    angles = positions.astype(jnp.float32)[:, :, None] * frequencies[None, None, :]
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional KV cache.

    With `decode=True` the keys and values of each call are written into the `cache`
    collection at `cache_index`, and the queries attend over the whole cache, masked by
    `kv_positions`. A position of -1 marks padding, which is never attended to.
    """

    config: GPT2Config
    decode: bool = False
    mesh: Mesh | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        *,
        deterministic: bool,
        kv_positions: Array | None = None,
        cache_index: Array | None = None,
    ) -> Array:
        cfg = self.config
        heads, width = cfg.num_heads, cfg.projection_dim
        init_std = 0.02
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)

        def projection(name: str) -> Array:
            return DenseEinsum(
                "btd,dhp->bthp",
                (cfg.embedding_dim, heads, width),
                (ax.EMBEDDING, ax.HEADS, ax.PROJECTION),
                (ax.HEADS, ax.PROJECTION),
                init_std,
                name=name,
            )(x)

        query = self.hook_q(projection("query"))  # [b, t, h, p]
        key = self.hook_k(projection("key"))
        value = self.hook_v(projection("value"))
        if cfg.position_encoding == "p-rope":
            frequencies = jnp.asarray(rope_frequencies(cfg))
            query = apply_rope(query, positions, frequencies)
            key = apply_rope(key, positions, frequencies)
        query = query * jnp.asarray(width**-0.5, query.dtype)

        if self.decode:
            key, value = self._update_cache(key, value, cache_index)
            if kv_positions is None:
                raise ValueError("decode=True needs kv_positions for the whole cache.")
        else:
            kv_positions = positions

        scores = jnp.einsum("bthp,bshp->bhts", query, key)
        mask = (positions[:, None, :, None] >= kv_positions[:, None, None, :]) & (
            kv_positions[:, None, None, :] >= 0
        )
        scores = jnp.where(mask, scores, jnp.asarray(MASKED_OUT_VALUE, scores.dtype))
        probs = self.hook_pattern(jax.nn.softmax(scores, axis=-1))  # [b, h, t, s]
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
        mixed = self.hook_z(jnp.einsum("bhts,bshp->bthp", probs, value))
        mixed = _constrain(mixed, (ax.BATCH, ax.SEQ, ax.HEADS, ax.PROJECTION), self.mesh)
        return DenseEinsum(
            "bthp,hpd->btd",
            (heads, width, cfg.embedding_dim),
            (ax.HEADS, ax.PROJECTION, ax.EMBEDDING),
            (ax.EMBEDDING,),
            out_std,
            name="out",
        )(mixed)

    def _update_cache(self, key: Array, value: Array, cache_index: Array | None):
        if cache_index is None:
            raise ValueError("decode=True needs cache_index, the first free cache slot.")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if self.is_initializing():
            # The init call only sizes the cache from the key's shape [b, cache_len, h, p].
            return cached_key.value, cached_value.value
        start = (0, cache_index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        return cached_key.value, cached_value.value

    # Identity hook points, named after TransformerLens hooks; `nn.intercept_methods`
    # reads or replaces the values that pass through them.
    def hook_q(self, x: Array) -> Array:
        return x

    def hook_k(self, x: Array) -> Array:
        return x

    def hook_v(self, x: Array) -> Array:
        return x

    def hook_pattern(self, x: Array) -> Array:
        return x

    def hook_z(self, x: Array) -> Array:
        return x


class MLP(nn.Module):
    """GPT-2's MLP: dense to `neurons`, tanh GELU, dense back to `embedding`."""

    config: GPT2Config
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        hidden = nn.Dense(
            cfg.mlp_hidden_dim,
            kernel_init=_normal(0.02, (ax.EMBEDDING, ax.NEURONS)),
            bias_init=_constant(0.0, (ax.NEURONS,)),
            name="fc",
        )(x)
        hidden = self.hook_pre(hidden)
        hidden = self.hook_post(jax.nn.gelu(hidden, approximate=True))
        hidden = _constrain(hidden, (ax.BATCH, ax.SEQ, ax.NEURONS), self.mesh)
        return nn.Dense(
            cfg.embedding_dim,
            kernel_init=_normal(out_std, (ax.NEURONS, ax.EMBEDDING)),
            bias_init=_constant(0.0, (ax.EMBEDDING,)),
            name="proj",
        )(hidden)

    def hook_pre(self, x: Array) -> Array:
        return x

    def hook_post(self, x: Array) -> Array:
        return x


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    config: GPT2Config
    decode: bool = False
    mesh: Mesh | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        *,
        deterministic: bool,
        kv_positions: Array | None = None,
        cache_index: Array | None = None,
    ) -> Array:
        cfg = self.config
        x = self.hook_resid_pre(x)
        attn_out = CausalSelfAttention(cfg, decode=self.decode, mesh=self.mesh, name="attn")(
            LayerNorm(cfg.layer_norm_epsilon, name="ln_1")(x),
            positions,
            deterministic=deterministic,
            kv_positions=kv_positions,
            cache_index=cache_index,
        )
        attn_out = self.hook_attn_out(attn_out)
        x = x + nn.Dropout(cfg.residual_dropout)(attn_out, deterministic=deterministic)
        x = self.hook_resid_mid(_constrain(x, (ax.BATCH, ax.SEQ, ax.EMBEDDING), self.mesh))
        mlp_out = self.hook_mlp_out(
            MLP(cfg, mesh=self.mesh, name="mlp")(LayerNorm(cfg.layer_norm_epsilon, name="ln_2")(x))
        )
        x = x + nn.Dropout(cfg.residual_dropout)(mlp_out, deterministic=deterministic)
        return self.hook_resid_post(_constrain(x, (ax.BATCH, ax.SEQ, ax.EMBEDDING), self.mesh))

    def hook_resid_pre(self, x: Array) -> Array:
        return x

    def hook_attn_out(self, x: Array) -> Array:
        return x

    def hook_resid_mid(self, x: Array) -> Array:
        return x

    def hook_mlp_out(self, x: Array) -> Array:
        return x

    def hook_resid_post(self, x: Array) -> Array:
        return x


class GPT2(nn.Module):
    """GPT-2 language model returning logits [batch, seq, vocabulary].

    Token ids must lie in [0, vocab_size): JAX indexing would clamp others silently, so
    callers validate them first (see `gpt2_spec.check_token_ids`).

    Attributes:
      config: The architecture.
      decode: Whether attention keeps a KV cache in the `cache` collection.
      mesh: The device mesh of sharded training. With a mesh, activations are
        constrained to the shardings that `gpt2_spec.axes.SHARDING_RULES` gives their
        logical axes; without one, XLA's propagation decides.
    """

    config: GPT2Config
    decode: bool = False
    mesh: Mesh | None = None

    def setup(self) -> None:
        cfg = self.config
        self.wte = nn.Embed(
            cfg.vocab_size,
            cfg.embedding_dim,
            embedding_init=_normal(0.02, (ax.VOCABULARY, ax.EMBEDDING)),
            name="wte",
        )
        if cfg.position_encoding == "learned":
            self.wpe = nn.Embed(
                cfg.context_length,
                cfg.embedding_dim,
                embedding_init=_normal(0.01, (ax.SEQ, ax.EMBEDDING)),
                name="wpe",
            )
        self.blocks = [
            Block(cfg, decode=self.decode, mesh=self.mesh, name=f"block_{i}")
            for i in range(cfg.num_layers)
        ]
        self.ln_f = LayerNorm(cfg.layer_norm_epsilon, name="ln_f")
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        *,
        deterministic: bool = True,
        kv_positions: Array | None = None,
        cache_index: Array | None = None,
    ) -> Array:
        """Compute logits.

        Args:
          tokens: int32 token ids [batch, seq].
          positions: int32 positions [batch, seq]; -1 marks padding. Defaults to
            0 .. seq-1 in every row.
          deterministic: Whether dropout is off. Training passes False and a
            `dropout` RNG.
          kv_positions: With `decode`, the positions [batch, cache_len] of every
            cache slot after this call's tokens are written (-1 for empty or padding).
          cache_index: With `decode`, the cache slot where this call's first token goes.

        Returns:
          float32 logits [batch, seq, vocabulary].
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.hook_embed(self.wte(tokens))
        if self.config.position_encoding == "learned":
            x = x + self.hook_pos_embed(self.wpe(jnp.maximum(positions, 0)))
        x = self.embedding_dropout(x, deterministic=deterministic)
        x = _constrain(x, (ax.BATCH, ax.SEQ, ax.EMBEDDING), self.mesh)
        for block in self.blocks:
            x = block(
                x,
                positions,
                deterministic=deterministic,
                kv_positions=kv_positions,
                cache_index=cache_index,
            )
        x = self.ln_f(x)
        logits = self.wte.attend(x)
        return _constrain(logits, (ax.BATCH, ax.SEQ, ax.VOCABULARY), self.mesh)

    def hook_embed(self, x: Array) -> Array:
        return x

    def hook_pos_embed(self, x: Array) -> Array:
        return x
