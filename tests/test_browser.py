"""The HTML views in real headless Chromium, driven over the DevTools protocol on a pipe.

Chromium gets no network-facing debugging port: commands go through file descriptors 3
and 4 (`--remote-debugging-pipe`), pages load from file:// URLs, and background networking,
component updates, sync and QUIC are off. Without Chromium the tests skip, unless CI=true,
where they fail.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import time

import numpy as np
import pytest

from penzai_gpt2 import views

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)
TIMEOUT_S = 60.0


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires the browser tests to run")
        pytest.skip(f"{message}; set CI=true to make this a failure")
    return path


class DevToolsPipe:
    """A minimal DevTools-protocol client over Chromium's `--remote-debugging-pipe`."""

    def __init__(self, executable: str, profile_dir: str):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Chromium reads commands from fd 3 and writes replies to fd 4. bash moves the pipe
        # ends there (dash rejects fd numbers above 9). A preexec_fn could do the same, but it
        # forks the multithreaded JAX process, which JAX warns about.
        wiring = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        command = [shutil.which("bash") or "/bin/bash", "-c", wiring, executable, *CHROMIUM_FLAGS]
        command += [f"--user-data-dir={profile_dir}", "--remote-debugging-pipe"]
        self.process = subprocess.Popen(
            command,
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer over the DevTools pipe in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for_event(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class Page:
    """One browser tab showing a local file."""

    def __init__(self, browser: DevToolsPipe, path):
        self.browser = browser
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1000, height=700,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.send("Page.navigate", url=path.resolve().as_uri())
        browser.wait_for_event("Page.loadEventFired")

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, self.session, **params)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0):
        """Evaluate `expression` until it is truthy (for pages that render asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium_path()
    pipe = DevToolsPipe(executable, str(tmp_path_factory.mktemp("chromium-profile")))
    yield pipe
    pipe.close()


def causal_patterns(layers, heads, seq, seed=0):
    scores = np.random.default_rng(seed).normal(scale=2.0, size=(layers, heads, seq, seq))
    scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


TOKENS = list("The cat sat.")

# Returns each token's background alpha and stored weight after hovering token `index`.
HOVER_SCRIPT = """
(() => {{
  const tokens = [...document.querySelectorAll("#tokens .token")];
  tokens[{index}].dispatchEvent(new MouseEvent("mouseover", {{bubbles: true}}));
  return tokens.map((t) => ({{
    background: getComputedStyle(t).backgroundColor,
    weight: t.dataset.weight,
    kind: t.dataset.kind,
  }}));
}})()
"""

SELECT_SCRIPT = """
(() => {{
  for (const [id, value] of [["layer-select", "{layer}"], ["head-select", "{head}"]]) {{
    const select = document.getElementById(id);
    select.value = value;
    select.dispatchEvent(new Event("change"));
  }}
  return document.querySelectorAll("#tokens .token").length;
}})()
"""


def alpha(css_colour: str) -> float:
    parts = css_colour[css_colour.index("(") + 1 : -1].split(",")
    return float(parts[3]) if len(parts) == 4 else 1.0


def expected_weights(patterns, layer, head, index):
    pattern = patterns[layer, head]
    return np.array(
        [pattern[index, j] if j <= index else pattern[j, index] for j in range(pattern.shape[0])]
    )


@pytest.fixture(scope="module")
def attention_file(tmp_path_factory):
    patterns = causal_patterns(2, 3, len(TOKENS))
    path = tmp_path_factory.mktemp("views") / "attention.html"
    views.save_attention_page(path, patterns, TOKENS, "browser test")
    return path, patterns


def test_attention_page_renders_tokens(browser, attention_file):
    path, _ = attention_file
    page = Page(browser, path)
    texts = page.evaluate(
        '[...document.querySelectorAll("#tokens .token")].map(t => t.textContent)'
    )
    assert texts == [t if t != " " else "\u2423" for t in TOKENS]
    assert page.evaluate('document.querySelectorAll("#layer-select option").length') == 2
    assert page.evaluate('document.querySelectorAll("#head-select option").length') == 3
    assert page.evaluate('document.querySelectorAll("#matrix td").length') == len(TOKENS) ** 2


def test_hover_highlights_attention(browser, attention_file):
    path, patterns = attention_file
    page = Page(browser, path)
    before = page.evaluate(
        '[...document.querySelectorAll("#tokens .token")].map(t => t.dataset.weight)'
    )
    assert set(before) == {""}
    for index in (0, 4, len(TOKENS) - 1):
        styles = page.evaluate(HOVER_SCRIPT.format(index=index))
        expected = expected_weights(patterns, 0, 0, index)
        np.testing.assert_allclose([alpha(s["background"]) for s in styles], expected, atol=0.01)
        np.testing.assert_allclose([float(s["weight"]) for s in styles], expected, atol=1e-4)
        kinds = [s["kind"] for s in styles]
        assert kinds == ["attends-to"] * (index + 1) + ["attended-by"] * (len(TOKENS) - index - 1)


def test_select_boxes_switch_head(browser, attention_file):
    path, patterns = attention_file
    page = Page(browser, path)
    assert page.evaluate(SELECT_SCRIPT.format(layer=1, head=2)) == len(TOKENS)
    styles = page.evaluate(HOVER_SCRIPT.format(index=6))
    expected = expected_weights(patterns, 1, 2, 6)
    np.testing.assert_allclose([float(s["weight"]) for s in styles], expected, atol=1e-4)
    assert not np.allclose(expected, expected_weights(patterns, 0, 0, 6), atol=1e-3)


def test_real_mouse_hover(browser, attention_file):
    path, patterns = attention_file
    page = Page(browser, path)
    box = page.evaluate(
        '(() => { const r = document.querySelectorAll("#tokens .token")[5]'
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
    weights = page.evaluate(
        '[...document.querySelectorAll("#tokens .token")].map(t => t.dataset.weight)'
    )
    np.testing.assert_allclose(
        np.array(weights, float), expected_weights(patterns, 0, 0, 5), atol=1e-4
    )


def test_screenshot_shows_tokens(browser, attention_file):
    import matplotlib.image

    path, _ = attention_file
    page = Page(browser, path)
    page.evaluate(HOVER_SCRIPT.format(index=len(TOKENS) - 1))
    png = page.screenshot()
    assert png.startswith(b"\x89PNG")
    (path.parent / "attention.png").write_bytes(png)
    if os.environ.get("GPT2_TWINS_SCREENSHOT_DIR"):
        target = os.path.join(os.environ["GPT2_TWINS_SCREENSHOT_DIR"], "attention.png")
        with open(target, "wb") as file:
            file.write(png)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    assert image.shape[:2] == (700, 1000)
    assert image.std() > 0.05, "screenshot is blank"
    # Highlighted tokens are drawn blue: blue clearly above red somewhere.
    blue = (image[..., 2] - image[..., 0]) > 0.2
    assert blue.sum() > 200
    # Dark text pixels exist (token and heading glyphs).
    assert (image.max(-1) < 0.3).sum() > 500


def test_token_scores_page_colours(browser, tmp_path):
    scores = {"attribution": [-2.0, 0.0, 1.0, 2.0]}
    path = views.save_token_scores_page(tmp_path / "scores.html", list("abcd"), scores)
    page = Page(browser, path)
    styles = page.evaluate(
        '[...document.querySelectorAll("#tokens .token")]'
        ".map(t => getComputedStyle(t).backgroundColor)"
    )
    assert len(styles) == 4
    np.testing.assert_allclose([alpha(s) for s in styles], [1.0, 0.0, 0.5, 1.0], atol=0.01)
    assert styles[0].startswith("rgb(220, 38, 38") or styles[0].startswith("rgba(220, 38, 38")
    assert "37, 99, 235" in styles[3]


def test_treescope_page_renders(browser, tmp_path):
    import jax

    from bridge.convert import flax_to_penzai
    from flax_gpt2.params import init_params
    from gpt2_spec import GPT2Config

    config = GPT2Config(
        vocab_size=11, context_length=8, embedding_dim=16, num_layers=1, num_heads=2
    )
    model = flax_to_penzai(init_params(config, jax.random.key(0)), config)
    path = views.save_treescope(tmp_path / "model.html", model)
    page = Page(browser, path)
    # treescope decompresses and builds its view after the load event.
    text = page.wait_for(
        '(() => { const c = document.querySelector("treescope-container");'
        " const text = c && c.shadowRoot ? c.shadowRoot.textContent : '';"
        " return text.includes('Loading...') ? null : text; })()"
    )
    assert text is not None, "treescope did not build its container"
    assert "TransformerLM" in text
