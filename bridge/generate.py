"""Text generation for both twins: settings, input checks, batching and the public API.

The sampling rules (`bridge.sampling`) and the compiled loop (`bridge.decode_loop`) are
shared; only the cached forward step (`bridge.decode_steps`) differs between the twins.
Prompts of different lengths are LEFT-padded to a power-of-two bucket, and positions
come from the attention mask, so a prompt gives the same greedy tokens alone or in a
batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bridge.decode_loop import Controls, register_listener, run_generation, unregister_listener
from bridge.decode_steps import TwinModel, make_twin
from bridge.sources import ModelSource
from gpt2_spec import GPT2Config, check_length, check_token_ids

logger = logging.getLogger(__name__)

# Called with (index of the new token, token per row [batch], whether the row was still
# running [batch]) as each token is sampled.
TokenCallback = Callable[[int, np.ndarray, np.ndarray], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How many tokens to generate and how to choose them.

    Attributes:
      max_new_tokens: Maximum number of tokens to add to each prompt.
      temperature: Softmax temperature; 0 means greedy (argmax) decoding.
      top_k: Keep only the k most likely tokens before sampling; None keeps all.
      top_p: Keep the smallest set of most likely tokens whose probability reaches p
        (nucleus sampling); None keeps all.
      seed: Seed of the sampling key; the same seed, weights and prompts give the same
        tokens in both twins.
      sliding_window: Allow prompt + new tokens to exceed the context length by
        predicting each later token from the last context_length tokens. Each such
        token costs a full forward pass over context_length tokens (no cache).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    sliding_window: bool = False

    def __post_init__(self) -> None:
        if _not_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}."
            )
        if not isinstance(self.temperature, int | float) or not self.temperature >= 0:
            raise ValueError(
                f"temperature must be a number >= 0 (0 means greedy), got {self.temperature!r}."
            )
        if self.top_k is not None and (_not_int(self.top_k) or self.top_k < 1):
            raise ValueError(
                f"top_k must be a positive integer or None (no top-k), got {self.top_k!r}."
            )
        if self.top_p is not None and not (
            isinstance(self.top_p, int | float) and 0 < self.top_p <= 1
        ):
            raise ValueError(f"top_p must be in (0, 1] or None (no top-p), got {self.top_p!r}.")
        if _not_int(self.seed) or not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be an integer in [0, 2**31), got {self.seed!r}.")


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | np.integer)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """New tokens for each prompt.

    Attributes:
      tokens: int32 [batch, max_new_tokens]; a row that ended early is padded with its
        end-of-sequence id after it.
      lengths: int32 [batch]: how many of each row's tokens are real, the
        end-of-sequence id included.
      finished: bool [batch]: whether the row ended at the end-of-sequence id.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray

    @property
    def sequences(self) -> list[np.ndarray]:
        """Each row's new tokens without the padding after its end."""
        return [row[:length] for row, length in zip(self.tokens, self.lengths, strict=True)]


def bucket_size(length: int, cap: int | None = None) -> int:
    """Round `length` up to a power of two, but to no more than `cap` (when it fits)."""
    size = 1 << max(0, length - 1).bit_length()
    if cap is not None and length <= cap:
        size = min(size, cap)
    return size


def left_pad(prompts: Sequence[np.ndarray], width: int, pad_id: int = 0):
    """Return (ids, mask) [len(prompts), width] with each prompt at the right end."""
    ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=bool)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, -len(prompt) :] = prompt
            mask[row, -len(prompt) :] = True
    return ids, mask


def check_prompts(
    prompt_ids: Sequence[np.ndarray], config: GPT2Config, settings: GenerationSettings
) -> list[np.ndarray]:
    """Validate prompt ids and lengths against the model; return them as int32 arrays.

    Raises:
      ValueError: for no prompts, an empty or too long prompt, an id outside the
        vocabulary, or prompt + new tokens over the context without a sliding window.
    """
    if isinstance(prompt_ids, np.ndarray) and prompt_ids.ndim == 1:
        raise TypeError("prompt_ids must be a list of 1-D id arrays; wrap one prompt in [ ].")
    if len(prompt_ids) == 0:
        raise ValueError("No prompts given; pass at least one prompt.")
    checked = []
    for index, prompt in enumerate(prompt_ids):
        array = np.asarray(prompt)
        if array.ndim != 1:
            raise ValueError(f"Prompt {index} must be a 1-D id array, got shape {array.shape}.")
        check_length(len(array), config, what=f"prompt {index}")
        checked.append(check_token_ids(array, config.vocab_size))
    longest = max(len(prompt) for prompt in checked)
    total = longest + settings.max_new_tokens
    if total > config.context_length and not settings.sliding_window:
        raise ValueError(
            f"The maximum prompt length is {longest} tokens and max_new_tokens is "
            f"{settings.max_new_tokens}, {total} in all, but the context length is "
            f"{config.context_length}; lower max_new_tokens to at most "
            f"{config.context_length - longest}, shorten the prompt, or enable the "
            "sliding window (sliding_window=True, CLI --sliding-window)."
        )
    return checked


def check_eos_id(eos_id: int | None, config: GPT2Config) -> None:
    """Raise if `eos_id` is neither None nor an id in the model's vocabulary."""
    if eos_id is None:
        return
    if _not_int(eos_id) or not 0 <= eos_id < config.vocab_size:
        raise ValueError(
            f"eos_id {eos_id!r} is outside the model's vocabulary [0, {config.vocab_size}); "
            f"pass an id below {config.vocab_size}, or None for no end-of-sequence id."
        )


def _controls(settings: GenerationSettings, eos_id: int | None, listener_id: int) -> Controls:
    return Controls(
        max_new_tokens=jnp.int32(settings.max_new_tokens),
        temperature=jnp.float32(settings.temperature),
        top_k=jnp.int32(settings.top_k or 0),
        top_p=jnp.float32(1.0 if settings.top_p is None else settings.top_p),
        seed=jnp.int32(settings.seed),
        eos_id=jnp.int32(-1 if eos_id is None else eos_id),
        pad_id=jnp.int32(0 if eos_id is None else eos_id),
        listener_id=jnp.int32(listener_id),
    )


def generate(
    twin_model: TwinModel,
    prompt_ids: Sequence[np.ndarray],
    settings: GenerationSettings,
    *,
    eos_id: int | None = None,
    on_tokens: TokenCallback | None = None,
) -> GenerationResult:
    """Generate new tokens for a batch of prompts with either twin.

    Args:
      twin_model: From `bridge.decode_steps.flax_twin`, `penzai_twin` or `make_twin`.
      prompt_ids: One 1-D int array of token ids per prompt; lengths may differ.
      settings: Token budget, sampling rules and seed.
      eos_id: A row stops after producing this id; an occurrence inside the prompt
        does not stop it. None generates `max_new_tokens` in every row.
      on_tokens: Called from JAX's callback thread with (index, tokens [batch],
        active [batch]) as each token is sampled, for streaming.

    Returns:
      The new tokens, their per-row counts and which rows ended at `eos_id`.

    Raises:
      ValueError: for invalid prompts or an `eos_id` outside the vocabulary.
    """
    config = twin_model.config
    prompts = check_prompts(prompt_ids, config, settings)
    check_eos_id(eos_id, config)
    longest = max(len(prompt) for prompt in prompts)
    prompt_bucket = bucket_size(longest, config.context_length)
    new_bucket = bucket_size(settings.max_new_tokens)
    tokens, mask = left_pad(prompts, prompt_bucket)
    logger.debug(
        "Generating with the %s twin: %d prompts in bucket %d, %d new tokens in bucket %d",
        twin_model.kind,
        len(prompts),
        prompt_bucket,
        settings.max_new_tokens,
        new_bucket,
    )

    listener_id = register_listener(on_tokens) if on_tokens is not None else 0
    try:
        new_tokens, lengths, finished = run_generation(
            twin_model.step,
            twin_model.weights,
            jnp.asarray(tokens),
            jnp.asarray(mask),
            _controls(settings, eos_id, listener_id),
            new_bucket=new_bucket,
            sliding_window=settings.sliding_window,
            stream=on_tokens is not None,
        )
        new_tokens = np.asarray(new_tokens)
        if on_tokens is not None:
            jax.effects_barrier()  # every streamed token has reached the callback
    finally:
        if on_tokens is not None:
            unregister_listener(listener_id)
    return GenerationResult(
        tokens=new_tokens[:, : settings.max_new_tokens],
        lengths=np.asarray(lengths),
        finished=np.asarray(finished),
    )


def generate_text(
    source: ModelSource,
    prompts: Sequence[str],
    settings: GenerationSettings,
    *,
    twin: str = "flax",
    eos_id: int | None = None,
    on_tokens: TokenCallback | None = None,
) -> list[str]:
    """Generate a continuation of each text prompt with the source's tokenizer.

    Args:
      source: From `bridge.sources.load_model_source`.
      prompts: The prompt texts.
      settings: Token budget, sampling rules and seed.
      twin: `flax` or `penzai`.
      eos_id: End-of-sequence id; None uses the source's own (which may be None).
      on_tokens: Streaming callback, as in `generate`.

    Returns:
      The new text of each prompt, without the prompt.

    Raises:
      ValueError: if the source has no tokenizer, or a prompt has a character the
        tokenizer cannot encode.
    """
    if source.tokenizer is None:
        raise ValueError(
            f"The model at {source.path} has no tokenizer, so it cannot encode text; "
            "pass token ids to `generate` (CLI: --prompt-ids) instead."
        )
    prompt_ids = [source.tokenizer.encode(text) for text in prompts]
    model = make_twin(twin, source.params, source.config)
    result = generate(
        model,
        prompt_ids,
        settings,
        eos_id=source.eos_id if eos_id is None else eos_id,
        on_tokens=on_tokens,
    )
    return [source.tokenizer.decode(ids) for ids in result.sequences]
