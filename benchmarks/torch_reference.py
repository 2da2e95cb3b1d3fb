"""A nanoGPT-style PyTorch GPT-2 of any `GPT2Config` shape, timed in the benchmark's process.

The model is written here from the GPT-2 architecture (pre-LayerNorm blocks, tanh GELU,
tied embeddings, learned positions) with random weights; nothing is downloaded. Torch is
optional: import this module only after `importlib.util.find_spec("torch")` finds it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

# PyTorch's OpenMP threads busy-wait between parallel regions by default. On an
# oversubscribed CPU that is costly: a shakespeare-char train step (12 x 64) took 1.25 s
# with the default and 0.14 s with PASSIVE on 2 shared cores at load average 7. So the
# reference sleeps instead, unless the caller set a policy before torch was imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from gpt2_spec import GPT2Config  # noqa: E402


class _Attention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.qkv = nn.Linear(config.embedding_dim, 3 * config.embedding_dim)
        self.out = nn.Linear(config.embedding_dim, config.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(mixed.transpose(1, 2).reshape(batch, seq, width))


class _Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.embedding_dim, eps=eps)
        self.attn = _Attention(config)
        self.ln_2 = nn.LayerNorm(config.embedding_dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.embedding_dim, config.mlp_hidden_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_hidden_dim, config.embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT2(nn.Module):
    """GPT-2 in PyTorch, nanoGPT style, without dropout.

    Raises:
      ValueError: if the config uses p-RoPE (the reference has learned positions only).
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if config.position_encoding != "learned":
            raise ValueError(
                f"The PyTorch reference supports learned positions only, got "
                f"position_encoding={config.position_encoding!r}; benchmark it with --no-torch."
            )
        self.wte = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.wpe = nn.Embedding(config.context_length, config.embedding_dim)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_epsilon)
        for name, param in self.named_parameters():
            if name.endswith("weight") and param.dim() == 2:
                scaled = name.endswith("out.weight") or name.endswith("mlp.2.weight")
                std = 0.02 / math.sqrt(2 * config.num_layers) if scaled else 0.02
                nn.init.normal_(param, 0.0, std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied output head


def torch_calls(
    config: GPT2Config, batch: int, seq: int, threads: int | None = None
) -> dict[str, Callable[[], Any]]:
    """Build the reference's forward pass (no grad) and AdamW train step as zero-argument calls.

    Both run eagerly (no `torch.compile`), so their first call is not a compile step.

    Args:
      config: The shape to build.
      batch: Rows per batch.
      seq: Tokens per row.
      threads: `torch.set_num_threads` value; defaults to the usable cores.

    Returns:
      `{"forward": ..., "train_step": ...}`; `train_step` returns the loss as a float, so it
      has finished when it returns.
    """
    torch.manual_seed(0)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    model = TorchGPT2(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1))
    tokens, targets = ids[:, :-1], ids[:, 1:]

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(tokens)

    def train_step() -> float:
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return {"forward": forward, "train_step": train_step}
