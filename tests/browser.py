"""TensorBoard as a person sees it: two runs of ``examples/wrong_backward.py`` (the wrong backward
and the fixed one), a TensorBoard server on them, and headless Chromium driven over the DevTools
protocol (through a pipe, standard library only) to read and photograph its pages.

``python -m tests.browser docs/images`` (``make screenshots``) refreshes the README's pictures.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

# Debian's package names the browser `chromium`; other systems may call it otherwise.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# How long a page may take to show what is waited for (TensorBoard loads its data lazily).
PAGE_TIMEOUT_S = 60.0
# The window of the pictures: a laptop's browser.
WIDTH, HEIGHT = 1280, 800
# The text of every element under ``root``, shadow roots included (TensorBoard's older pages
# are Polymer components).
DEEP_TEXT = """(root => {
  const out = [];
  const walk = n => {
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) {
      if (c.nodeType === 3) out.push(c.textContent);
      else if (!['STYLE', 'SCRIPT'].includes(c.tagName)) walk(c);
    }
  };
  walk(root);
  return out.join(' ').replace(/\\s+/g, ' ');
})(document)"""


def browser_command() -> str | None:
    """The headless browser's executable, or None when none is installed."""
    return next((found for b in BROWSERS if (found := shutil.which(b))), None)


class Chromium:
    """A headless Chromium page, driven over the DevTools protocol through a pipe (the browser
    reads commands from its fd 3 and answers on fd 4, each message ending in a NUL byte)."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        executable = browser_command()
        if executable is None:
            raise FileNotFoundError(f"no headless browser: install one of {BROWSERS}")
        commands, self._to_browser = os.pipe()
        self._from_browser, answers = os.pipe()

        def child_fds() -> None:  # in the browser's process: its commands on 3, answers on 4
            os.dup2(commands, 100)
            os.dup2(answers, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self._process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            close_fds=False,
        )
        os.close(commands)
        os.close(answers)
        self._next, self._buffer = 0, b""
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        size = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", size)

    def _send(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                    raise TimeoutError(f"the browser did not answer {method}")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise ConnectionError("the browser closed its pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:  # events and other replies are not waited for
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A DevTools command on the page."""
        return self._send(method, params or {}, self._session)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression on the page (promises awaited)."""
        found = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in found:
            raise RuntimeError(f"{expression[:60]}…: {found['exceptionDetails']}")
        return found["result"].get("value")

    def wait_for(
        self, expression: str, shows: Callable[[Any], bool], timeout: float = PAGE_TIMEOUT_S
    ) -> Any:
        """The value of ``expression`` once ``shows`` accepts it, polled until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if shows(value):
                return value
            time.sleep(0.5)
        raise TimeoutError(f"the page never showed what was waited for: {expression[:80]}…")

    def scroll_to(self, text: str) -> bool:
        """Scrolls the innermost element holding ``text`` (shadow roots included) to the top
        of the window; whether one was found."""
        found = self.evaluate(SCROLL_TO.replace("TEXT", json.dumps(text)))
        time.sleep(0.5)
        return bool(found)

    def text(self) -> str:
        """All the text on the page, shadow roots included."""
        return str(self.evaluate(DEEP_TEXT))

    def screenshot(self, path: Path) -> Path:
        """The window as a PNG of few colours (small enough for a README)."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        image = Image.open(path).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return path

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def tensorboard(logdir: Path) -> Iterator[str]:
    """A TensorBoard server on ``logdir``; yields its address once it lists the runs."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://localhost:{port}"
    runs = sorted({str(p.parent.relative_to(logdir)) for p in logdir.rglob("events.out.*")})
    try:
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while sorted(_runs(address)) != runs:
            if time.monotonic() > deadline or server.poll() is not None:
                raise TimeoutError(f"TensorBoard on {logdir} never listed the runs {runs}")
            time.sleep(0.5)
        yield address
    finally:
        server.terminate()
        server.wait()


def _runs(address: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{address}/data/runs", timeout=5) as answer:
            return list(json.load(answer))
    except OSError:
        return []


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def log_runs(root: Path) -> dict[str, Any]:
    """``examples/wrong_backward.py``'s run (fails) and its ``--fixed`` run (passes), checks at
    steps 0 and 10, logged under ``root``; the callbacks by run name."""
    from tests.callback_models import example

    wrong_backward = example("wrong_backward")
    return {
        "wrong_backward/version_0": wrong_backward.run(fixed=False, log_dir=root),
        "fixed_backward/version_0": wrong_backward.run(fixed=True, log_dir=root),
    }


# Scrolls to the innermost element whose text holds TEXT.
SCROLL_TO = """(() => {
  let best = null;
  const walk = n => {
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.children || []) {
      if ((c.textContent || '').includes(TEXT)) best = c;
      walk(c);
    }
  };
  walk(document.body);
  if (!best) return false;
  best.scrollIntoView({block: 'start'});
  let box = best;  // and back a little, so what is above it (the run's name) shows too
  while (box && !(box.scrollHeight > box.clientHeight && box.scrollTop > 0)) {
    box = box.parentElement || box.getRootNode().host;
  }
  if (box) box.scrollTop -= 90;
  return true;
})()"""
# The landing page's image cards: title, text (the run's name), picture and where it ends on
# the screen, in page order.
CARDS = """[...document.querySelectorAll('image-card')].map(card => {
  const img = card.querySelector('img');
  return {title: card.querySelector('tb-truncated-path')?.getAttribute('title'),
          text: card.textContent.replace(/\\s+/g, ' ').trim(),
          src: img?.src || null, bottom: img?.getBoundingClientRect().bottom || null,
          width: img?.getBoundingClientRect().width || null,
          loaded: !!img && img.complete && img.naturalWidth > 0};
})"""
# The groups of the landing page, in page order.
GROUPS = "[...document.querySelectorAll('.group-title')].map(e => e.textContent.trim())"


def pictures(out: Path) -> list[Path]:
    """Logs the two runs, opens TensorBoard on them and saves the landing page (Time Series) and
    the report text (TEXT) to ``out``."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        log_runs(root)
        with tensorboard(root) as address:
            page = Chromium()
            try:
                page.open(f"{address}/")
                page.wait_for(CARDS, lambda cards: sum(c["loaded"] for c in cards) == 2)
                time.sleep(1)
                first = page.screenshot(out / "tensorboard_time_series.png")
                page.open(f"{address}/#text")
                page.wait_for(DEEP_TEXT, lambda text: "PASS at step 10" in text)
                page.scroll_to("FAIL at step 10")  # the failing run's report
                time.sleep(1)
                second = page.screenshot(out / "tensorboard_text.png")
            finally:
                page.close()
    return [first, second]


if __name__ == "__main__":
    for saved in pictures(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")):
        print(saved)
