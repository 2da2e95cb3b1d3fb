"""An HTML page of a prompt's tokens coloured by per-token scores.

Scores can be a per-token loss, a neuron's activation, an attribution, or anything else
with one number per token. A select box switches between several score rows. Signed
scores use a diverging scale (blue positive, red negative) centred on zero; non-negative
scores go from white to red.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from penzai_gpt2.views.html import display_token, page

_BODY = """
<div class="controls">
  <label>Score <select id="score-select"></select></label>
  <span id="range" class="legend"></span>
</div>
<div id="tokens" class="tokens"></div>
"""

_SCRIPT = """
const select = document.getElementById("score-select");
const tokensBox = document.getElementById("tokens");
const range = document.getElementById("range");

function colour(value, low, high) {
  if (low < 0) {
    const limit = Math.max(-low, high) || 1;
    const strength = Math.min(Math.abs(value) / limit, 1);
    const rgb = value >= 0 ? "37, 99, 235" : "220, 38, 38";
    return "rgba(" + rgb + ", " + strength.toFixed(4) + ")";
  }
  const strength = high > 0 ? Math.min(value / high, 1) : 0;
  return "rgba(220, 38, 38, " + strength.toFixed(4) + ")";
}

function render() {
  const name = select.value;
  const scores = DATA.scores[name];
  const low = Math.min(...scores), high = Math.max(...scores);
  range.textContent = name + ": min " + low.toFixed(4) + ", max " + high.toFixed(4);
  tokensBox.textContent = "";
  DATA.tokens.forEach((text, i) => {
    const span = document.createElement("span");
    span.className = "token";
    span.dataset.index = String(i);
    span.dataset.score = scores[i].toFixed(6);
    span.textContent = text;
    span.title = name + " = " + scores[i].toFixed(6);
    span.style.backgroundColor = colour(scores[i], low, high);
    tokensBox.appendChild(span);
  });
}

Object.keys(DATA.scores).forEach((name) => {
  const option = document.createElement("option");
  option.value = name;
  option.textContent = name;
  select.appendChild(option);
});
select.addEventListener("change", render);
render();
"""


def token_scores_page(
    tokens: Sequence[str],
    scores: Mapping[str, Sequence[float] | np.ndarray] | np.ndarray,
    title: str = "Token scores",
) -> str:
    """Return a self-contained HTML page of tokens coloured by score.

    Args:
      tokens: The label of every position.
      scores: Score name -> one finite number per token, or one array (named `score`).
      title: Page heading.

    Raises:
      ValueError: if a score row's length differs from the tokens' or contains NaN or inf.
    """
    if not isinstance(scores, Mapping):
        scores = {"score": scores}
    if not scores:
        raise ValueError("token_scores_page needs at least one score row.")
    rows = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(tokens):
            raise ValueError(
                f"Score {name!r} has {values.shape[0]} values for {len(tokens)} tokens; "
                "give one value per token."
            )
        if not np.isfinite(values).all():
            raise ValueError(f"Score {name!r} contains NaN or infinite values.")
        rows[str(name)] = values.tolist()
    data = {"tokens": [display_token(t) for t in tokens], "scores": rows}
    return page(title, _BODY, data, _SCRIPT)


def save_token_scores_page(path: str | Path, tokens, scores, title: str = "Token scores") -> Path:
    """Write `token_scores_page(...)` to `path` and return the path."""
    path = Path(path)
    path.write_text(token_scores_page(tokens, scores, title), "utf-8")
    return path
