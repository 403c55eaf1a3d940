"""The chat-overhead harness measures what it claims: the upstream paces a full SSE stream by its decode clock, the
load client counts complete streams only, and both work through our server's relay."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chat_overhead import API_KEY, _env, _free_port, _start_server, _stop, _wait_http
from bench.load_client import run_load

ROOT = Path(__file__).resolve().parents[2]
TOKENS, STEP_S = 8, 0.005


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "stream_upstream.py"), str(port), "--tokens", str(TOKENS),
         "--token-delay", str(STEP_S)], cwd=ROOT, env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, timeout_s=30)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def proxied(upstream: str) -> Iterator[str]:
    server, url = _start_server(["--engine", "sglang", "--sglang-upstream", upstream, "--base-model-name", "tiny"])
    try:
        _wait_http(url + "/ready", server, {"Authorization": f"Bearer {API_KEY}"}, timeout_s=30)
        yield url
    finally:
        _stop(server)


def _events() -> int:
    return TOKENS + 4  # role, tokens, finish, usage, [DONE]: one HTTP chunk each


async def test_direct_streams_are_complete_and_paced_by_the_decode_clock(upstream: str) -> None:
    summary = await run_load(upstream + "/v1/chat/completions", "tiny", None, concurrency=4, duration_s=0.4)
    assert summary["failed"] == 0 and summary["ok"] >= 4
    assert summary["chunks_p50"] == _events()
    # one event per decode step, the first one step after admission: never faster than the clock
    assert summary["p50"] >= (_events() - 1) * STEP_S
    assert summary["ttft_p50"] >= STEP_S * 0.5


async def test_streams_through_our_server_arrive_whole(proxied: str) -> None:
    summary = await run_load(proxied + "/v1/chat/completions", "tiny", API_KEY, concurrency=4, duration_s=0.4)
    assert summary["failed"] == 0 and summary["ok"] >= 4
    assert summary["chunks_p50"] >= 2  # the relay may merge events, never drop the stream's end
    assert summary["p50"] >= (_events() - 1) * STEP_S


async def test_a_refused_request_counts_as_failed_with_its_status(proxied: str) -> None:
    summary = await run_load(proxied + "/v1/chat/completions", "tiny", "wrong-key", concurrency=2, duration_s=0.1)
    assert summary["ok"] == 0 and summary["failed"] >= 2
    assert "401" in str(summary["first_error"])


def test_the_upstream_answers_health_and_unknown_paths(upstream: str) -> None:
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(upstream + "/health", timeout=5) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(upstream + "/nope", timeout=5)
    assert err.value.code == 404
