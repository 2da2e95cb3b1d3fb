"""The axis vocabulary both twins share, and the table that maps it onto a device mesh.

The Penzai twin uses these names as named-array axes; the Flax twin uses the same strings
as logical axis names of parameters and activations. One rules table then shards both.
"""

from __future__ import annotations

BATCH = "batch"  # sequences in a batch
SEQ = "seq"  # query / token position (also the rows of the learned position table)
KV_SEQ = "kv_seq"  # key / value position inside attention
EMBEDDING = "embedding"  # residual stream width
HEADS = "heads"  # attention heads
PROJECTION = "projection"  # per-head width of queries, keys and values
NEURONS = "neurons"  # MLP hidden width
VOCABULARY = "vocabulary"  # token ids
BLOCKS = "blocks"  # stacked layers, when the blocks are scanned

ALL_AXES = (BATCH, SEQ, KV_SEQ, EMBEDDING, HEADS, PROJECTION, NEURONS, VOCABULARY, BLOCKS)

# Mesh axis names. `data` splits the batch, `fsdp` splits the batch and the parameters'
# embedding axis (fully sharded data parallelism), `model` splits heads, neurons and the
# vocabulary (tensor parallelism).
DATA = "data"
FSDP = "fsdp"
MODEL = "model"
MESH_AXES = (DATA, FSDP, MODEL)

# Logical axis -> mesh axes. Axes missing from the table are replicated.
SHARDING_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, (DATA, FSDP)),
    (SEQ, None),
    (KV_SEQ, None),
    (EMBEDDING, FSDP),
    (HEADS, MODEL),
    (PROJECTION, None),
    (NEURONS, MODEL),
    (VOCABULARY, MODEL),
    (BLOCKS, None),
)
