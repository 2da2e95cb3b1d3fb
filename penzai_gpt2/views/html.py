"""Page scaffolding shared by the HTML views: one document with inline CSS, data and JS."""

from __future__ import annotations

import html
import json
from typing import Any

BASE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; }
h1 { font-size: 1.3rem; }
.controls { margin: 0.8rem 0; display: flex; gap: 1.2rem; align-items: center; }
.tokens { font-family: ui-monospace, monospace; font-size: 1.1rem; line-height: 2.2;
  max-width: 70rem; }
.token { display: inline-block; padding: 0.1rem 0.25rem; margin: 0.1rem; border-radius: 0.2rem;
  border: 1px solid #d1d5db; cursor: default; white-space: pre; min-width: 0.8rem;
  text-align: center; }
.legend { font-size: 0.9rem; color: #4b5563; }
"""

# Characters that would be invisible or break the layout, shown as visible symbols.
_VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def display_token(text: str) -> str:
    """Return `text` with spaces and line breaks replaced by visible symbols."""
    return "".join(_VISIBLE.get(char, char) for char in text)


def json_for_script(data: Any) -> str:
    """Serialize `data` as JSON that is safe inside a `<script>` element."""
    # "</" would end the script element early; "<\/" is the same string in JSON.
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


def page(title: str, body: str, data: Any, script: str, style: str = "") -> str:
    """Return a complete HTML document with the data as a JSON script element."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{BASE_STYLE}{style}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{body}
<script id="page-data" type="application/json">{json_for_script(data)}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("page-data").textContent);
{script}
</script>
</body>
</html>
"""
