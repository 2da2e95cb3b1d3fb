"""Hugging Face GPT-2 `config.json` <-> `gpt2_spec.GPT2Config`, rejecting what the twins lack."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gpt2_spec import GPT2Config

logger = logging.getLogger(__name__)

# HF key -> GPT2Config field. Every architectural key of transformers' GPT2Config.
FIELD_MAP = {
    "vocab_size": "vocab_size",
    "n_positions": "context_length",
    "n_embd": "embedding_dim",
    "n_layer": "num_layers",
    "n_head": "num_heads",
    "n_inner": "mlp_hidden_dim",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "embd_pdrop": "embedding_dropout",
    "attn_pdrop": "attention_dropout",
    "resid_pdrop": "residual_dropout",
}

# Both names denote the tanh approximation of GELU that GPT-2 uses.
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# HF key -> the only value the twins implement. Any other value is rejected.
REQUIRED_VALUES: dict[str, Any] = {
    "model_type": "gpt2",
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
    "pruned_heads": {},
}

# Keys that change nothing in the forward pass: generation and tokenizer ids, the
# sequence-classification head (`summary_*`), initialization, bookkeeping written by
# `save_pretrained`, and generic `PretrainedConfig` options.
IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "initializer_range",
        "use_cache",
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "task_specific_params",
        "id2label",
        "label2id",
        "problem_type",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "is_decoder",
        "is_encoder_decoder",
        "tokenizer_class",
        "prefix",
        "finetuning_task",
        "chunk_size_feed_forward",
        "tie_encoder_decoder",
        "gradient_checkpointing",
        "n_ctx",
        "tie_word_embeddings",
        "activation_function",
        # Generation defaults and framework flags that older `save_pretrained` versions
        # wrote into every config.json.
        "output_past",
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "cross_attention_hidden_size",
        "_attn_implementation_autoset",
        "attn_implementation",
    }
)


def read_config_json(path: Path) -> dict[str, Any]:
    """Read and parse a `config.json`.

    Raises:
      FileNotFoundError: if the file is missing.
      ValueError: if it is not a JSON object.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; a Hugging Face GPT-2 folder needs config.json.")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON: {error}; restore or rewrite the file."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(values).__name__}.")
    return values


def _check_supported(values: dict[str, Any], source: str) -> None:
    for key, expected in REQUIRED_VALUES.items():
        if key in values and values[key] != expected:
            raise ValueError(
                f"{source}: {key}={values[key]!r} is not supported; the twins implement only "
                f"{key}={expected!r} (plain GPT-2)."
            )
    activation = values.get("activation_function", "gelu_new")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"{source}: activation_function={activation!r} is not supported; the twins "
            f"implement only the tanh GELU, named {' or '.join(SUPPORTED_ACTIVATIONS)}."
        )
    n_ctx = values.get("n_ctx")
    if n_ctx is not None and n_ctx != values.get("n_positions"):
        raise ValueError(
            f"{source}: n_ctx={n_ctx!r} differs from n_positions={values.get('n_positions')!r}; "
            "the twins have one context length, so make them equal."
        )
    unknown = sorted(set(values) - set(FIELD_MAP) - set(REQUIRED_VALUES) - IGNORED_KEYS)
    if unknown:
        raise ValueError(
            f"{source}: unknown GPT-2 config keys {unknown}; the importer does not know "
            "whether they change the model. Remove them if they do not."
        )


def config_from_hf(values: dict[str, Any], source: str = "config.json") -> GPT2Config:
    """Map a Hugging Face GPT-2 config dict to a `GPT2Config`.

    Args:
      values: The parsed `config.json`.
      source: Name of the file, used in error messages.

    Raises:
      ValueError: naming the key and value of any setting the twins do not implement,
        a missing architectural key, or an invalid value.
    """
    _check_supported(values, source)
    fields: dict[str, Any] = {}
    for hf_key, field in FIELD_MAP.items():
        if hf_key not in values:
            if hf_key == "n_inner":
                continue  # absent means 4 x n_embd, as null does
            raise ValueError(f"{source}: missing key {hf_key!r} (maps to GPT2Config.{field}).")
        fields[field] = values[hf_key]
    try:
        config = GPT2Config(**fields)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from None
    logger.debug("Mapped %s to %s", source, config)
    return config


def config_to_hf(config: GPT2Config, eos_id: int | None = None) -> dict[str, Any]:
    """Return the Hugging Face GPT-2 `config.json` dict of a learned-position `config`.

    Raises:
      ValueError: if the config uses p-RoPE, which HF GPT-2 cannot express.
    """
    if config.position_encoding != "learned":
        raise ValueError(
            f"position_encoding={config.position_encoding!r} has no Hugging Face GPT-2 "
            "equivalent (HF GPT-2 has only a learned position table); export a model "
            "trained with position_encoding='learned'."
        )
    values: dict[str, Any] = {hf_key: getattr(config, field) for hf_key, field in FIELD_MAP.items()}
    values.update(REQUIRED_VALUES)
    values.update(
        {
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
            "tie_word_embeddings": True,
            "dtype": "float32",
        }
    )
    return values
