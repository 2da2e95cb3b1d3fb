"""An HTML page of attention patterns for every layer and head over a prompt's tokens.

Select boxes choose the sequence, layer and head. Hovering a token colours the tokens it
attends to (earlier ones, blue) and the tokens that attend to it (later ones, orange) by
attention weight, and a matrix below shows the whole pattern of the chosen head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from penzai_gpt2.views.html import display_token, page

_STYLE = """
.token.focused { outline: 2px solid #111827; }
#matrix { border-collapse: collapse; margin-top: 1.2rem; font-family: ui-monospace, monospace;
  font-size: 0.75rem; }
#matrix td, #matrix th { border: 1px solid #e5e7eb; min-width: 1.4rem; height: 1.4rem;
  text-align: center; padding: 0; }
#matrix th { font-weight: normal; color: #374151; }
"""

_BODY = """
<div class="controls">
  <label id="sequence-control">Sequence <select id="sequence-select"></select></label>
  <label>Layer <select id="layer-select"></select></label>
  <label>Head <select id="head-select"></select></label>
</div>
<p class="legend">Hover a token: <span style="background:rgba(37,99,235,0.6)">blue</span> marks
what it attends to, <span style="background:rgba(234,88,12,0.6)">orange</span> what attends to
it; the colour's strength is the attention weight.</p>
<div id="tokens" class="tokens"></div>
<table id="matrix"></table>
"""

_SCRIPT = """
const sequenceSelect = document.getElementById("sequence-select");
const layerSelect = document.getElementById("layer-select");
const headSelect = document.getElementById("head-select");
const tokensBox = document.getElementById("tokens");
const matrix = document.getElementById("matrix");
let focus = null;

function fillSelect(select, count, prefix) {
  for (let i = 0; i < count; i++) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = prefix + " " + i;
    select.appendChild(option);
  }
}

function currentPattern() {
  return DATA.patterns[+sequenceSelect.value][+layerSelect.value][+headSelect.value];
}

function currentTokens() {
  return DATA.tokens[+sequenceSelect.value];
}

function colour(kind, weight) {
  const rgb = kind === "attends-to" ? "37, 99, 235" : "234, 88, 12";
  return "rgba(" + rgb + ", " + weight.toFixed(4) + ")";
}

function applyFocus(index) {
  focus = index;
  const pattern = currentPattern();
  tokensBox.querySelectorAll(".token").forEach((element, j) => {
    element.classList.toggle("focused", j === index);
    if (index === null) {
      element.style.backgroundColor = "";
      element.dataset.weight = "";
      element.dataset.kind = "";
      return;
    }
    // Causal attention: earlier tokens (and itself) are attended to, later ones attend.
    const kind = j <= index ? "attends-to" : "attended-by";
    const weight = kind === "attends-to" ? pattern[index][j] : pattern[j][index];
    element.style.backgroundColor = colour(kind, weight);
    element.dataset.weight = weight.toFixed(4);
    element.dataset.kind = kind;
    element.title = (kind === "attends-to" ? "attended to with weight " :
      "attends to the hovered token with weight ") + weight.toFixed(4);
  });
}

function renderTokens() {
  tokensBox.textContent = "";
  currentTokens().forEach((text, i) => {
    const span = document.createElement("span");
    span.className = "token";
    span.dataset.index = String(i);
    span.textContent = text;
    span.addEventListener("mouseover", () => applyFocus(i));
    tokensBox.appendChild(span);
  });
}

function renderMatrix() {
  const pattern = currentPattern();
  const tokens = currentTokens();
  matrix.textContent = "";
  const header = matrix.insertRow();
  header.appendChild(document.createElement("th"));
  tokens.forEach((text) => {
    const th = document.createElement("th");
    th.textContent = text;
    header.appendChild(th);
  });
  pattern.forEach((row, query) => {
    const tr = matrix.insertRow();
    const th = document.createElement("th");
    th.textContent = tokens[query];
    tr.appendChild(th);
    row.forEach((weight, key) => {
      const cell = tr.insertCell();
      cell.style.backgroundColor = colour("attends-to", weight);
      cell.title = tokens[query] + " \\u2192 " + tokens[key] + ": " + weight.toFixed(4);
    });
  });
}

function render() {
  renderTokens();
  renderMatrix();
  if (focus !== null && focus < currentTokens().length) { applyFocus(focus); }
  else { applyFocus(null); }
}

fillSelect(sequenceSelect, DATA.tokens.length, "sequence");
fillSelect(layerSelect, DATA.num_layers, "layer");
fillSelect(headSelect, DATA.num_heads, "head");
if (DATA.tokens.length === 1) {
  document.getElementById("sequence-control").style.display = "none";
}
[sequenceSelect, layerSelect, headSelect].forEach((s) => s.addEventListener("change", render));
render();
"""


def _check_patterns(patterns: np.ndarray, tokens: Sequence[Sequence[str]]) -> np.ndarray:
    patterns = np.asarray(patterns, dtype=np.float64)
    if patterns.ndim == 4:
        patterns = patterns[None]
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(
            "Attention patterns must have shape [batch, layer, head, query, key] (or without "
            f"batch) with query == key, got shape {patterns.shape}."
        )
    if len(tokens) != patterns.shape[0]:
        raise ValueError(
            f"Got {len(tokens)} token sequences for {patterns.shape[0]} batch rows of patterns."
        )
    for row, labels in enumerate(tokens):
        if len(labels) != patterns.shape[-1]:
            raise ValueError(
                f"Sequence {row} has {len(labels)} token labels but the patterns cover "
                f"{patterns.shape[-1]} positions."
            )
    return patterns


def attention_page(
    patterns: np.ndarray,
    tokens: Sequence[str] | Sequence[Sequence[str]],
    title: str = "Attention patterns",
) -> str:
    """Return a self-contained HTML page of attention patterns.

    Args:
      patterns: Softmax probabilities [batch, layer, head, query, key], or without batch.
      tokens: The label of every position (one list, or one list per batch row).
      title: Page heading.

    NOTE: Every weight is embedded as JSON text (about 7 bytes each), so the page grows as
    batch x layers x heads x seq^2. It suits short prompts, not whole 1024-token contexts.
    """
    if tokens and isinstance(tokens[0], str):
        tokens = [tokens]
    patterns = _check_patterns(patterns, tokens)
    data = {
        "tokens": [[display_token(t) for t in labels] for labels in tokens],
        "num_layers": patterns.shape[1],
        "num_heads": patterns.shape[2],
        # Four decimals keep the page small and are far below what a colour can show.
        "patterns": np.round(patterns, 4).tolist(),
    }
    return page(title, _BODY, data, _SCRIPT, _STYLE)


def save_attention_page(path: str | Path, patterns: np.ndarray, tokens, title: str = "") -> Path:
    """Write `attention_page(...)` to `path` and return the path."""
    path = Path(path)
    path.write_text(attention_page(patterns, tokens, title or "Attention patterns"), "utf-8")
    return path
