"""Hugging Face GPT-2 folders (`config.json` + `model.safetensors`) <-> Flax twin parameters.

HF GPT-2 stores its projections as `Conv1D`, whose weight is `[in, out]` (the transpose
of `torch.nn.Linear`), and fuses query, key and value into one `c_attn` with columns
q | k | v, heads contiguous inside each. The Flax twin keeps them as separate
`[embedding, heads, projection]` kernels, so import splits and reshapes, export
concatenates; neither changes a bit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from bridge.hf_config import config_from_hf, config_to_hf, read_config_json
from bridge.sources import ModelSource
from bridge.tokenizers import load_folder_tokenizer, save_folder_tokenizer
from gpt2_spec import GPT2Config, Tokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Causal-mask buffers that older transformers versions saved with the weights.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")

Params = dict[str, Any]


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as float32, with `transformer.` stripped.

    Raises:
      FileNotFoundError: if the file is missing.
      ValueError: if the file is truncated or otherwise unreadable.
    """
    if not path.is_file():
        hint = ""
        if (path.parent / "pytorch_model.bin").is_file():
            hint = (
                " The folder has pytorch_model.bin instead; only safetensors is read, so save "
                "the model again with save_pretrained(..., safe_serialization=True)."
            )
        raise FileNotFoundError(f"{path} not found; a Hugging Face GPT-2 folder needs it.{hint}")
    try:
        tensors = safetensors.numpy.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated. "
            "Copy it again from its source."
        ) from None
    weights = {}
    for name, tensor in tensors.items():
        bare = name.removeprefix("transformer.")
        if bare.endswith(_BUFFER_SUFFIXES):
            continue
        if tensor.dtype != np.float32:
            logger.info("Casting %s from %s to float32", name, tensor.dtype)
        weights[bare] = np.asarray(tensor, dtype=np.float32)
    return weights


def _take(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...], source: Path):
    if name not in weights:
        raise ValueError(f"{source}: missing tensor {name!r} with shape {shape}.")
    tensor = weights.pop(name)
    if tensor.shape != shape:
        raise ValueError(
            f"{source}: tensor {name!r} has shape {tensor.shape}, but config.json implies "
            f"{shape}; the weights and the config do not belong together."
        )
    return tensor


def _layer_norm(weights, prefix: str, d: int, source: Path) -> Params:
    return {
        "scale": _take(weights, f"{prefix}.weight", (d,), source),
        "bias": _take(weights, f"{prefix}.bias", (d,), source),
    }


def _block_from_hf(weights, i: int, config: GPT2Config, source: Path) -> Params:
    d, h, p, n = (
        config.embedding_dim,
        config.num_heads,
        config.projection_dim,
        config.mlp_hidden_dim,
    )
    pre = f"h.{i}"
    qkv_kernel = _take(weights, f"{pre}.attn.c_attn.weight", (d, 3 * d), source)
    qkv_bias = _take(weights, f"{pre}.attn.c_attn.bias", (3 * d,), source)
    attn = {
        name: {"kernel": kernel.reshape(d, h, p), "bias": bias.reshape(h, p)}
        for name, kernel, bias in zip(
            ("query", "key", "value"),
            np.split(qkv_kernel, 3, axis=1),
            np.split(qkv_bias, 3),
            strict=True,
        )
    }
    attn["out"] = {
        "kernel": _take(weights, f"{pre}.attn.c_proj.weight", (d, d), source).reshape(h, p, d),
        "bias": _take(weights, f"{pre}.attn.c_proj.bias", (d,), source),
    }
    mlp = {
        "fc": {
            "kernel": _take(weights, f"{pre}.mlp.c_fc.weight", (d, n), source),
            "bias": _take(weights, f"{pre}.mlp.c_fc.bias", (n,), source),
        },
        "proj": {
            "kernel": _take(weights, f"{pre}.mlp.c_proj.weight", (n, d), source),
            "bias": _take(weights, f"{pre}.mlp.c_proj.bias", (d,), source),
        },
    }
    return {
        "ln_1": _layer_norm(weights, f"{pre}.ln_1", d, source),
        "attn": attn,
        "ln_2": _layer_norm(weights, f"{pre}.ln_2", d, source),
        "mlp": mlp,
    }


def _check_output_head(weights, wte: np.ndarray, tied: bool, source: Path) -> None:
    head = weights.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, wte):
        raise ValueError(
            f"{source}: lm_head.weight differs from wte.weight (untied embeddings); the twins "
            "always tie the output head to the token embeddings."
        )
    if not tied and head is None:
        raise ValueError(
            f"{source}: tie_word_embeddings=false but no lm_head.weight is stored; the twins "
            "support only tied embeddings (tie_word_embeddings=true)."
        )


def params_from_hf(
    weights: dict[str, np.ndarray], config: GPT2Config, source: Path, tied: bool = True
) -> Params:
    """Build the Flax twin's parameter tree from bare-named HF GPT-2 tensors.

    Raises:
      ValueError: naming a missing, misshapen or unexpected tensor, or untied embeddings.
    """
    weights = dict(weights)
    v, t, d = config.vocab_size, config.context_length, config.embedding_dim
    params: Params = {
        "wte": {"embedding": _take(weights, "wte.weight", (v, d), source)},
        "wpe": {"embedding": _take(weights, "wpe.weight", (t, d), source)},
    }
    _check_output_head(weights, params["wte"]["embedding"], tied, source)
    for i in range(config.num_layers):
        params[f"block_{i}"] = _block_from_hf(weights, i, config, source)
    params["ln_f"] = _layer_norm(weights, "ln_f", d, source)
    if weights:
        raise ValueError(
            f"{source}: unexpected tensors {sorted(weights)[:8]} for a {config.num_layers}-layer "
            "GPT-2; the file holds a different architecture than config.json describes."
        )
    return params


def params_to_hf(params: Params, config: GPT2Config) -> dict[str, np.ndarray]:
    """Return HF GPT-2 tensors (`transformer.`-prefixed, tied head omitted) of Flax params."""
    d = config.embedding_dim
    out = {
        "wte.weight": params["wte"]["embedding"],
        "wpe.weight": params["wpe"]["embedding"],
        "ln_f.weight": params["ln_f"]["scale"],
        "ln_f.bias": params["ln_f"]["bias"],
    }
    for i in range(config.num_layers):
        block, pre = params[f"block_{i}"], f"h.{i}"
        attn = [block["attn"][name] for name in ("query", "key", "value")]
        out[f"{pre}.attn.c_attn.weight"] = np.concatenate(
            [np.asarray(a["kernel"]).reshape(d, d) for a in attn], axis=1
        )
        out[f"{pre}.attn.c_attn.bias"] = np.concatenate(
            [np.asarray(a["bias"]).reshape(d) for a in attn]
        )
        out[f"{pre}.attn.c_proj.weight"] = np.asarray(block["attn"]["out"]["kernel"]).reshape(d, d)
        out[f"{pre}.attn.c_proj.bias"] = block["attn"]["out"]["bias"]
        for ln in ("ln_1", "ln_2"):
            out[f"{pre}.{ln}.weight"] = block[ln]["scale"]
            out[f"{pre}.{ln}.bias"] = block[ln]["bias"]
        for hf_name, name in (("c_fc", "fc"), ("c_proj", "proj")):
            out[f"{pre}.mlp.{hf_name}.weight"] = block["mlp"][name]["kernel"]
            out[f"{pre}.mlp.{hf_name}.bias"] = block["mlp"][name]["bias"]
    return {
        f"transformer.{k}": np.ascontiguousarray(np.asarray(v, dtype=np.float32))
        for k, v in out.items()
    }


def _eos_id(values: dict[str, Any], config: GPT2Config, source: Path) -> int | None:
    eos = values.get("eos_token_id")
    if isinstance(eos, list):  # Some configs list several stop ids, and GPT-2 has one.
        eos = eos[0] if eos else None
    if eos is None:
        return None
    if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < config.vocab_size:
        raise ValueError(
            f"{source}: eos_token_id={eos!r} is not a token id in [0, {config.vocab_size})."
        )
    return eos


def _check_tokenizer(tokenizer: Tokenizer | None, config: GPT2Config, folder: Path) -> None:
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model has only "
            f"{config.vocab_size}; its ids could not all be embedded. Use the model's own "
            "tokenizer."
        )


def load_hf_source(path: str | Path) -> ModelSource:
    """Load a local Hugging Face GPT-2 folder as a `ModelSource` with Flax twin params.

    Reads `config.json`, `model.safetensors` and, when present, `tokenizer.json` (BPE) or
    `char_tokenizer.json` (written by `save_hf` for a character-level run).

    Raises:
      FileNotFoundError: if `config.json` or `model.safetensors` is missing.
      ValueError: naming the file and the problem for corrupt files, unsupported
        settings, and missing or misshapen tensors.
    """
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    values = read_config_json(config_path)
    config = config_from_hf(values, source=str(config_path))
    weights_path = folder / WEIGHTS_FILE
    tied = values.get("tie_word_embeddings", True)
    params = params_from_hf(read_safetensors(weights_path), config, weights_path, tied=tied)
    tokenizer = load_folder_tokenizer(folder)
    _check_tokenizer(tokenizer, config, folder)
    logger.info("Loaded Hugging Face GPT-2 from %s: %s", folder, config)
    return ModelSource(
        config=config,
        params=params,
        tokenizer=tokenizer,
        eos_id=_eos_id(values, config, config_path),
        path=folder,
        kind="hf",
    )


def save_hf(
    out: str | Path,
    config: GPT2Config,
    params: Params,
    tokenizer: Tokenizer | None = None,
    eos_id: int | None = None,
) -> Path:
    """Write a Hugging Face GPT-2 folder that `GPT2LMHeadModel.from_pretrained` opens.

    Args:
      out: Folder to create; it must not exist or be empty.
      config: Architecture, with learned positions.
      params: Flax twin parameters.
      tokenizer: Written as `tokenizer.json` (BPE) or `char_tokenizer.json` (characters).
      eos_id: Written as `bos_token_id` and `eos_token_id`.

    Returns:
      The folder.

    Raises:
      ValueError: for a p-RoPE config, a tokenizer with more ids than the model, or a
        non-empty `out`.
    """
    hf_config = config_to_hf(config, eos_id)  # raises for p-RoPE before touching the disk
    _check_tokenizer(tokenizer, config, Path(out))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; choose a new --out folder.")
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    safetensors.numpy.save_file(
        params_to_hf(params, config), str(out / WEIGHTS_FILE), metadata={"format": "pt"}
    )
    save_folder_tokenizer(tokenizer, out)
    logger.info("Wrote Hugging Face GPT-2 folder %s", out)
    return out


def export_source(source: ModelSource, out: str | Path) -> Path:
    """Write a loaded run directory or HF folder as a Hugging Face GPT-2 folder."""
    return save_hf(out, source.config, source.params, source.tokenizer, source.eos_id)
