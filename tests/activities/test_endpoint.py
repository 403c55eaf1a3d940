"""The endpoint probe against an aiohttp stand-in on loopback: readiness, version, smoke chat, failures."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from activities.endpoint import ProbeInput, ProbeResult, probe_endpoint
from tests.activities.standin_server import Behavior, serve_in_thread


@pytest.fixture
def behavior() -> Behavior:
    """The stand-in's behavior, changed by each test."""
    return Behavior(api_key="k1")


@pytest.fixture
def url(behavior: Behavior) -> Iterator[str]:
    """Base URL of a running stand-in."""
    with serve_in_thread(behavior) as base:
        yield base


def probe(url: str, **kwargs: object) -> ProbeResult:
    return probe_endpoint(ProbeInput(url, **{"api_key": "k1", "timeout": 2.0, **kwargs}))  # type: ignore[arg-type]


def test_ready_with_version_and_smoke_chat(url: str) -> None:
    """A ready endpoint serving the expected version answers the smoke chat."""
    result = probe(url, expect_version="v1", smoke_model="live")
    assert result == ProbeResult(True, "v1", "hello", None)
    assert ProbeResult.from_dict(result.to_dict()) == result


def test_ready_without_smoke(url: str) -> None:
    """Without smoke_model only /ready is asked."""
    assert probe(url) == ProbeResult(True, "v1")


def test_version_from_header(url: str, behavior: Behavior) -> None:
    """The version is read from X-Adapter-Version when the JSON has none."""
    behavior.version_in_header = True
    behavior.version = "v7"
    assert probe(url, expect_version="v7").served_version == "v7"


def test_version_mismatch_not_ready(url: str) -> None:
    """Serving another version is not ready, and the error names both versions."""
    result = probe(url, expect_version="v2", smoke_model="live")
    assert not result.ready and result.served_version == "v1"
    assert "'v1'" in (result.error or "") and "'v2'" in (result.error or "")


def test_not_ready_503(url: str, behavior: Behavior) -> None:
    """A 503 from /ready is not ready, with the status in the error."""
    behavior.ready_status = 503
    result = probe(url, smoke_model="live")
    assert not result.ready and "503" in (result.error or "")


def test_wrong_key(url: str) -> None:
    """A rejected API key is reported, not raised."""
    result = probe(url, api_key="wrong")
    assert not result.ready and "401" in (result.error or "") and "bad key" in (result.error or "")


def test_smoke_chat_error(url: str, behavior: Behavior) -> None:
    """A 500 from the chat route is not ready, with the OpenAI error message."""
    behavior.chat_status = 500
    result = probe(url, smoke_model="live")
    assert not result.ready and result.served_version == "v1"
    assert "engine exploded" in (result.error or "")


def test_smoke_chat_without_content(url: str, behavior: Behavior) -> None:
    """A chat reply without message content is not ready."""
    behavior.chat_reply = None
    assert "no message content" in (probe(url, smoke_model="live").error or "")


def test_smoke_chat_timeout(url: str, behavior: Behavior) -> None:
    """A chat slower than the timeout is reported as a failure."""
    behavior.chat_delay = 1.0
    result = probe(url, smoke_model="live", timeout=0.3)
    assert not result.ready and "Timeout" in (result.error or "")


def test_connection_refused() -> None:
    """Nothing listening is not ready, without raising."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe(f"http://127.0.0.1:{port}")
    assert not result.ready and "ConnectionError" in (result.error or "")


def test_session_reused(url: str) -> None:
    """A caller's session is used and left open."""
    with requests.Session() as session:
        assert probe_endpoint(ProbeInput(url, api_key="k1"), session=session).ready
        assert probe_endpoint(ProbeInput(url, api_key="k1"), session=session).ready


def test_input_validates() -> None:
    """A non-URL endpoint is a programming error; the key stays out of repr."""
    with pytest.raises(ValueError, match="endpoint"):
        ProbeInput("localhost:8000")
    assert "secret" not in repr(ProbeInput("http://x", api_key="secret"))


@contextmanager
def ready_standin(status: int, body: dict[str, Any]) -> Iterator[str]:
    """A loopback server whose `GET /ready` answers `status` with the JSON `body`; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            data = json.dumps(body).encode()
            self.send_response(status if self.path == "/ready" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


REFUSED = {"ready": False, "served_version": "old@1", "load_errors": {
    "other": {"version": "other@2", "sha256": "b" * 64, "reason": "rank 64 exceeds max_lora_rank 16"},
    "new": {"version": "new@3", "sha256": "c" * 64, "reason": "target module q_proj not in the base model"},
}}


def test_refused_adapter_reports_the_engine_reason() -> None:
    """A load_errors entry for the expected version comes back as `refused` with the engine's reason."""
    with ready_standin(503, REFUSED) as url:
        result = probe(url, expect_version="new@3", smoke_model="live")
    assert result.refused == "target module q_proj not in the base model"
    assert not result.ready and result.served_version == "old@1"
    assert "q_proj" in (result.error or "") and result.to_dict()["refused"] == result.refused


def test_load_errors_for_other_versions_are_not_a_refusal() -> None:
    """Errors for other versions, or no expected version, leave `refused` None (still waiting, or ready)."""
    with ready_standin(503, REFUSED) as url:
        waiting = probe(url, expect_version="new@4")
        any_version = probe(url)
    assert waiting.refused is None and not waiting.ready and "503" in (waiting.error or "")
    assert any_version.refused is None and "503" in (any_version.error or "")
    with ready_standin(200, {**REFUSED, "ready": True, "served_version": "new@4"}) as url:
        assert probe(url, expect_version="new@4") == ProbeResult(True, "new@4")
