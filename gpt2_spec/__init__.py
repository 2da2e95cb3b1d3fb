"""Framework-free pieces both twins share: model config, axis names, tokenizer, p-RoPE."""

from gpt2_spec import axes
from gpt2_spec.config import PRESETS, GPT2Config, preset
from gpt2_spec.rope import rope_frequencies
from gpt2_spec.tokenizer import CharTokenizer, Tokenizer
from gpt2_spec.validation import check_length, check_token_ids

__all__ = [
    "PRESETS",
    "CharTokenizer",
    "GPT2Config",
    "Tokenizer",
    "axes",
    "check_length",
    "check_token_ids",
    "preset",
    "rope_frequencies",
]
