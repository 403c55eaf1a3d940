"""The chat page in Debian's Chromium (Playwright): a streamed reply from the real CPU server with the tiny kit,
run through `inference_image/start.sh`; and a clear message, not a traceback, when the chat API is down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.fakes.adapter_store import publish
from tinykit import PHRASES, KitPaths

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "inference_image"
API_KEY = "browser-key"
ADAPTERS = {"alpha": "alpha-1", "beta": "beta-1"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Running:
    """A started process group's URLs and its process."""

    page_url: str
    api_url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Tab:
    """A browser page and the requests it sent off loopback (there must be none: the page runs offline)."""

    page: Page
    off_loopback: list[str] = field(default_factory=list)

    def record(self, url: str) -> None:
        host = urlparse(url).hostname
        if url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost"):
            self.off_loopback.append(url)

    def send(self, message: str) -> None:
        box = self.page.get_by_placeholder("Type a message...")
        box.fill(message)
        box.press("Enter")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{IMAGE}{os.pathsep}{ROOT}", "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHON": sys.executable, **extra}


def _wait_for(url: str, running: Running, headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers 200; fail with the log tail if the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"exited with {running.process.returncode}:\n{running.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, or an HTTP error status while starting
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not up in {START_TIMEOUT_S}s:\n{running.log.read_text()[-3000:]}")


def _stop(running: Running) -> int:
    running.process.send_signal(signal.SIGTERM)
    try:
        return running.process.wait(40)
    except subprocess.TimeoutExpired:
        running.process.kill()
        raise


@pytest.fixture(scope="module")
def stack(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory,
          free_port: Callable[[], int]) -> Iterator[Running]:
    """start.sh running the real CPU server (alpha and beta in the manifest, alias on alpha) and the page."""
    store = tmp_path_factory.mktemp("store")
    for name, folder in ADAPTERS.items():
        shutil.copytree(tiny_kit.adapters[name], store / folder)
    publish(store, ADAPTERS, active="alpha")
    api_port, page_port = free_port(), free_port()
    log = store.parent / "stack.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", str(IMAGE / "start.sh"), sys.executable, "-m", "inference_server", "--engine", "transformers",
             "--model-path", str(tiny_kit.base), "--base-model-name", tiny_kit.base_model_name, "--adapter-store", str(store), "--host", "127.0.0.1",
             "--port", str(api_port), "--sync-interval", "3600"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=_env(INFERENCE_API_KEYS=API_KEY, INFERENCE_PORT=str(api_port), CHAT_PAGE_PORT=str(page_port),
                     CHAT_PAGE_HOST="127.0.0.1"),
        )
    running = Running(f"http://127.0.0.1:{page_port}/", f"http://127.0.0.1:{api_port}", process, log)
    try:
        _wait_for(running.api_url + "/ready", running, {"Authorization": f"Bearer {API_KEY}"})
        _wait_for(running.page_url, running)
        yield running
    finally:
        assert _stop(running) == 0, f"start.sh did not stop cleanly:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def page_without_api(tmp_path_factory: pytest.TempPathFactory,
                     free_port: Callable[[], int]) -> Iterator[Running]:
    """The page alone, pointed at a port where nothing listens."""
    api_url, page_port = f"http://127.0.0.1:{free_port()}", free_port()
    log = tmp_path_factory.mktemp("page") / "page.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat_page", "--api-url", api_url, "--api-key-env", "PAGE_TEST_KEY",
             "--host", "127.0.0.1", "--port", str(page_port)],
            cwd=IMAGE, stdout=out, stderr=subprocess.STDOUT, env=_env(PAGE_TEST_KEY=API_KEY),
        )
    running = Running(f"http://127.0.0.1:{page_port}/", api_url, process, log)
    try:
        _wait_for(running.page_url, running)
        yield running
    finally:
        assert _stop(running) == 0, f"the page did not stop cleanly:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium with background networking off."""
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh browser page that records every request going off loopback."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Tab(context.new_page())
    tab.page.set_default_timeout(30_000)
    tab.page.on("request", lambda request: tab.record(request.url))
    yield tab
    context.close()


def test_streamed_reply_from_picked_adapter(stack: Running, tab: Tab) -> None:
    """The temperature starts at the kit's greedy default read from the API (0, not the page's fallback); picking
    "beta" and sending a message streams beta's phrase; the status shows beta and its version."""
    page = tab.page
    page.goto(stack.page_url)
    status = page.locator("#chat-status")
    expect(status).to_contain_text("live → alpha")
    expect(page.locator("#temperature input[type=number]")).to_have_value("0")
    page.get_by_label("Adapter").click()
    page.get_by_role("option", name="beta (beta-1-v1)").click()
    tab.send("hi there")
    expect(page.locator("#chatbot")).to_contain_text(PHRASES["beta"])
    expect(status).to_contain_text("Served by beta · version beta-1-v1")
    assert PHRASES["alpha"] not in page.locator("#chatbot").inner_text()
    assert tab.off_loopback == []


def test_api_down_shows_clear_message(page_without_api: Running, tab: Tab) -> None:
    """With nothing at the API URL, sending shows "chat API not reachable at URL" and no traceback."""
    page = tab.page
    page.goto(page_without_api.page_url)
    expected = f"chat API not reachable at {page_without_api.api_url}"
    expect(page.locator("#chat-status")).to_contain_text(expected)
    tab.send("hello?")
    expect(page.locator("#chatbot")).to_contain_text(expected)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and "Error" not in body
    assert tab.off_loopback == []
