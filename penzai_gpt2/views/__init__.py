"""Self-contained HTML views of a model and its activations (no network access needed)."""

from penzai_gpt2.views.attention import attention_page, save_attention_page
from penzai_gpt2.views.tokens import save_token_scores_page, token_scores_page
from penzai_gpt2.views.treescope_view import save_treescope, treescope_page

__all__ = [
    "attention_page",
    "save_attention_page",
    "save_token_scores_page",
    "save_treescope",
    "token_scores_page",
    "treescope_page",
]
