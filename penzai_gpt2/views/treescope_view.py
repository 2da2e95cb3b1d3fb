"""A model's treescope rendering saved as a standalone HTML page, without IPython.

treescope 0.1.10's `render_to_html` returns a fragment with its own inline scripts and
styles; this module wraps it in a document. The output loads nothing from the network.
"""

from __future__ import annotations

import contextlib
import html
from pathlib import Path
from typing import Any

import treescope


def treescope_page(value: Any, title: str = "Model", visualize_arrays: bool = False) -> str:
    """Return a standalone HTML page with the foldable treescope view of `value`.

    Args:
      value: Any object treescope can render, for example the Penzai twin.
      title: Page title.
      visualize_arrays: Whether to draw arrays as coloured grids (bigger pages) instead
        of summaries.
    """
    scope = (
        treescope.active_autovisualizer.set_scoped(treescope.ArrayAutovisualizer())
        if visualize_arrays
        else contextlib.nullcontext()
    )
    with scope:
        fragment = treescope.render_to_html(value, roundtrip_mode=False)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f'<div id="treescope-root">{fragment}</div>\n</body>\n</html>\n'
    )


def save_treescope(
    path: str | Path, value: Any, title: str = "Model", visualize_arrays: bool = False
) -> Path:
    """Write `treescope_page(...)` to `path` and return the path."""
    path = Path(path)
    path.write_text(treescope_page(value, title, visualize_arrays), "utf-8")
    return path
