"""Per-layer parity: max absolute differences between the twins and the Hugging Face fixture.

The fixture folder contains a tiny HF GPT-2 (`config.json`, `model.safetensors`) and the
hidden states HF computed in float32 (`forward.npz`). Both twins load those weights through
`bridge.hf.load_hf_source` and run the fixture's `b2_input_ids` in float32 and in bfloat16
(parameters cast, so activations follow), and every layer is compared:
- `embed`: token + position embeddings (HF hidden state 0),
- `block_i`: block i's output (HF hidden state i + 1, or `last_block_out` for the last),
- `ln_f`: the final LayerNorm (HF's last hidden state),
- `logits`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from bridge.convert import flax_to_penzai
from bridge.hf import load_hf_source
from flax_gpt2.model import GPT2, Block, LayerNorm
from gpt2_spec import GPT2Config
from gpt2_spec import axes as ax
from penzai_gpt2.dropout import remove_dropout
from penzai_gpt2.forward import named_tokens
from penzai_gpt2.model import POSITIONS_INPUT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The pairs reported: each twin against the HF reference and against the other twin in
# float32, and the same in bfloat16 (the reference stays float32).
PAIRS = (
    ("flax/float32", "hf/float32"),
    ("penzai/float32", "hf/float32"),
    ("flax/float32", "penzai/float32"),
    ("flax/bfloat16", "penzai/bfloat16"),
    ("flax/bfloat16", "hf/float32"),
    ("penzai/bfloat16", "hf/float32"),
)


@dataclasses.dataclass(frozen=True)
class ParityRow:
    """Max absolute difference between two computations of one layer's output.

    Attributes:
      layer: `embed`, `block_i`, `ln_f` or `logits`.
      first: Left side, for example `flax/bfloat16`.
      second: Right side, for example `hf/float32`.
      max_abs_diff: Largest absolute elementwise difference, in float32.
      max_abs_value: Largest absolute value of `second`, for scale.
    """

    layer: str
    first: str
    second: str
    max_abs_diff: float
    max_abs_value: float

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "unit": "absolute difference"}


def hf_layers(forward: Any, prefix: str, num_layers: int) -> dict[str, np.ndarray]:
    """Return the fixture's per-layer reference outputs for the input set `prefix`."""
    hidden = forward[f"{prefix}_hidden_states"]
    layers = {"embed": hidden[0]}
    for i in range(num_layers - 1):
        layers[f"block_{i}"] = hidden[i + 1]
    layers[f"block_{num_layers - 1}"] = forward[f"{prefix}_last_block_out"]
    layers["ln_f"] = hidden[num_layers]
    layers["logits"] = forward[f"{prefix}_logits"]
    return layers


def flax_layers(config: GPT2Config, params: Any, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Run the Flax twin and read each layer's output through its hook methods."""
    layers: dict[str, jax.Array] = {}

    def record(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        module, method = context.module, context.method_name
        if isinstance(module, Block) and method == "hook_resid_pre" and module.name == "block_0":
            layers["embed"] = output
        elif isinstance(module, Block) and method == "hook_resid_post":
            layers[module.name] = output
        elif isinstance(module, LayerNorm) and module.name == "ln_f" and method == "__call__":
            layers["ln_f"] = output
        return output

    with nn.intercept_methods(record):
        layers["logits"] = GPT2(config).apply({"params": params}, jnp.asarray(tokens))
    return {name: np.asarray(value, np.float32) for name, value in layers.items()}


def penzai_layers(config: GPT2Config, params: Any, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Run the Penzai twin's body one sublayer at a time, keeping each layer's output."""
    model = remove_dropout(flax_to_penzai(params, config))
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    side_inputs = {POSITIONS_INPUT: named_tokens(positions)}
    x = named_tokens(tokens)
    layers: dict[str, Any] = {}
    blocks = 0
    for layer in model.body.sublayers:
        x = layer(x, **side_inputs)
        if isinstance(layer, pz.nn.BranchAndAddTogether):
            layers["embed"] = x
        elif isinstance(layer, model_parts.TransformerBlock):
            layers[f"block_{blocks}"] = x
            blocks += 1
        elif isinstance(layer, pz.nn.LayerNorm):
            layers["ln_f"] = x
    layers["logits"] = x
    axes = {"logits": (ax.BATCH, ax.SEQ, ax.VOCABULARY)}
    return {
        name: np.asarray(
            value.unwrap(*axes.get(name, (ax.BATCH, ax.SEQ, ax.EMBEDDING))), np.float32
        )
        for name, value in layers.items()
    }


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast every floating-point parameter to `dtype`."""
    return jax.tree.map(lambda value: jnp.asarray(value, dtype), params)


def parity_rows(fixture_dir: str | Path, prefix: str = "b2") -> list[ParityRow]:
    """Compare every layer of both twins, in float32 and bfloat16, with each other and with HF.

    Raises:
      FileNotFoundError: if the fixture folder lacks `forward.npz` or the checkpoint files.
    """
    folder = Path(fixture_dir)
    forward_path = folder / "forward.npz"
    if not forward_path.is_file():
        raise FileNotFoundError(
            f"{forward_path} not found; pass --fixture a folder with the tiny HF GPT-2 "
            "checkpoint and its reference outputs."
        )
    source = load_hf_source(folder)
    forward = np.load(forward_path)
    tokens = forward[f"{prefix}_input_ids"].astype(np.int32)
    outputs = {"hf/float32": hf_layers(forward, prefix, source.config.num_layers)}
    for dtype_name, dtype in DTYPES.items():
        params = cast_params(source.params, dtype)
        outputs[f"flax/{dtype_name}"] = flax_layers(source.config, params, tokens)
        outputs[f"penzai/{dtype_name}"] = penzai_layers(source.config, params, tokens)
    return compare_outputs(outputs)


def compare_outputs(outputs: dict[str, dict[str, np.ndarray]]) -> list[ParityRow]:
    """Return a row per layer for each pair in `PAIRS`."""
    rows = []
    layers = list(outputs["hf/float32"])
    for first, second in PAIRS:
        for layer in layers:
            a, b = outputs[first][layer], outputs[second][layer]
            rows.append(
                ParityRow(
                    layer=layer,
                    first=first,
                    second=second,
                    max_abs_diff=float(np.max(np.abs(a - b))),
                    max_abs_value=float(np.max(np.abs(b))),
                )
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Render `ParityRow.to_dict()` rows as Markdown: a line per layer, a column per pair."""
    pairs = list(dict.fromkeys(f"{row['first']} vs {row['second']}" for row in rows))
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    cell = {
        (row["layer"], f"{row['first']} vs {row['second']}"): row["max_abs_diff"] for row in rows
    }
    lines = ["| layer | " + " | ".join(pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for layer in layers:
        values = " | ".join(f"{cell[(layer, pair)]:.2e}" for pair in pairs)
        lines.append(f"| {layer} | {values} |")
    return "\n".join(lines)
