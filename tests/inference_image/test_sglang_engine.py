"""The SGLang engine against a fake SGLang child: launch arguments, adapter API calls, chat, restart on death."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE
from inference_server.engines.base import AdapterLoadError, ChatRequest, EngineError, EngineNotReady
from inference_server.engines.sglang_engine import SGLangEngine, SGLangOptions
from tests.fakes import fake_sglang
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, sse_events, start_client

FAKE_COMMAND = (sys.executable, fake_sglang.__file__)
MESSAGES = [{"role": "user", "content": "hi"}]


def events(log: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [r for r in rows if kind is None or r["event"] == kind]


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sglang.jsonl"
    monkeypatch.setenv(fake_sglang.LOG_ENV, str(path))
    monkeypatch.setenv("FAKE_SGLANG_TOKENS", "4")
    return path


def options(**overrides: Any) -> SGLangOptions:
    fields: dict[str, Any] = {
        "command": FAKE_COMMAND,
        "max_lora_rank": 16,
        "lora_target_modules": ("q_proj", "v_proj"),
        "max_loras_per_batch": 4,
        "restart_backoff_s": 0.05,
        "startup_timeout_s": 30,
        "extra_args": ("--mem-fraction-static", "0.8"),
    }
    fields.update(overrides)
    return SGLangOptions(**fields)


@pytest.fixture
async def engine(log: Path, tmp_path: Path) -> AsyncIterator[SGLangEngine]:
    initial = make_adapter(tmp_path / "store", "init-1", "init")
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options(), initial_adapters={"init": initial})
    await eng.start()
    yield eng
    await eng.stop()


async def test_launch_arguments(engine: SGLangEngine, log: Path, tmp_path: Path) -> None:
    """The child gets model, loopback host/port, LoRA settings, metrics, the initial adapters and extra args."""
    (launch,) = events(log, "launch")
    port = engine.url.rsplit(":", 1)[1]
    assert launch["pid"] == engine.pid
    assert launch["argv"] == [
        "--model-path",
        str(tmp_path / "model"),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--enable-lora",
        "--enable-metrics",
        "--max-loras-per-batch",
        "4",
        "--max-lora-rank",
        "16",
        "--lora-target-modules",
        "q_proj",
        "v_proj",
        "--lora-paths",
        f"init={tmp_path / 'store' / 'init-1'}",
        "--mem-fraction-static",
        "0.8",
    ]
    assert engine.health().ready and engine.loaded_adapters() == ["init"]


async def test_load_unload_requests(engine: SGLangEngine, log: Path, tmp_path: Path) -> None:
    """Load and unload post SGLang's bodies; a failed load raises AdapterLoadError with SGLang's message."""
    good = make_adapter(tmp_path / "store", "alpha-1", "alpha")
    bad = make_adapter(tmp_path / "store", "bad-1", "bad", bad=True)
    await engine.load_adapter("alpha", good)
    with pytest.raises(AdapterLoadError, match="Failed to load LoRA adapter 'bad'"):
        await engine.load_adapter("bad", bad)
    with pytest.raises(AdapterLoadError, match="already loaded"):
        await engine.load_adapter("alpha", good)
    await engine.unload_adapter("init")
    assert [e["body"] for e in events(log, "load")] == [
        {"lora_name": "alpha", "lora_path": str(good)},
        {"lora_name": "bad", "lora_path": str(bad)},
        {"lora_name": "alpha", "lora_path": str(good)},
    ]
    assert [e["body"] for e in events(log, "unload")] == [{"lora_name": "init"}]
    assert engine.loaded_adapters() == ["alpha"]


async def test_chat_requests(engine: SGLangEngine, log: Path) -> None:
    """Chat posts `<base>:<adapter>` (or the base name) with the sampling fields; SSE passes through unchanged."""
    req = ChatRequest(
        messages=MESSAGES,
        adapter="init",
        max_tokens=3,
        temperature=0.5,
        top_p=0.9,
        stop=["x"],
        seed=7,
        stream=True,
    )
    raw = b"".join([chunk async for chunk in engine.stream_sse(req, include_usage=True)])
    assert raw.endswith(b"data: [DONE]\n\n") and b'"content":"[init]"' in raw and b'"usage"' in raw
    deltas = [d async for d in engine.chat(req)]
    assert "".join(d.text for d in deltas) == "[init] w0 w1"
    assert deltas[-1].finish_reason == "length" and deltas[-1].usage.completion_tokens == 3
    plain = [d async for d in engine.chat(ChatRequest(messages=MESSAGES))]
    assert plain == [plain[0]] and plain[0].text == "[base] w0 w1 w2" and plain[0].finish_reason == "stop"
    bodies = [e["body"] for e in events(log, "chat")]
    assert bodies[0] == {
        "model": "tiny:init",
        "messages": MESSAGES,
        "max_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "stream": True,
        "stop": ["x"],
        "seed": 7,
        "stream_options": {"include_usage": True},
    }
    assert bodies[2] == {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 256,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": False,
    }


async def test_attached_upstream_request_shape(aiohttp_server) -> None:
    """Attached to an upstream, chat posts compact JSON with its Content-Type and never sends back a cookie the
    upstream set (one session serves every client)."""
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Content-Type"), request.headers.get("Cookie"), await request.read()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.set_cookie("upstream", "secret")
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/health", lambda _: web.Response(text=""))
    app.router.add_post("/v1/chat/completions", chat)
    upstream = await aiohttp_server(app)
    eng = SGLangEngine(None, "tiny", options=SGLangOptions(upstream_url=f"http://localhost:{upstream.port}"))
    await eng.start()
    try:
        req = ChatRequest(messages=MESSAGES, stream=True)
        for _ in range(2):
            raw = b"".join([chunk async for chunk in eng.stream_sse(req)])
            assert raw.endswith(b"data: [DONE]\n\n")
    finally:
        await eng.stop()
    assert [(ctype, cookie) for ctype, cookie, _ in seen] == [("application/json", None)] * 2
    assert seen[0][2] == json.dumps(eng.payload(req, stream=True), separators=(",", ":")).encode()


async def test_restart_after_death(engine: SGLangEngine, log: Path, tmp_path: Path) -> None:
    """A dead child is relaunched with the adapters loaded so far; not ready (503-worthy) meanwhile."""
    alpha = make_adapter(tmp_path / "store", "alpha-1", "alpha")
    await engine.load_adapter("alpha", alpha)
    await engine.unload_adapter("init")
    first_pid = engine.pid
    os.kill(first_pid, signal.SIGKILL)
    for _ in range(200):
        if not engine.health().ready:
            break
        await asyncio.sleep(0.01)
    assert not engine.health().ready and "restarting" in engine.health().detail
    with pytest.raises(EngineNotReady):
        await anext(engine.stream_sse(ChatRequest(messages=MESSAGES, stream=True)))
    for _ in range(500):
        if engine.health().ready:
            break
        await asyncio.sleep(0.02)
    assert engine.health().ready and engine.restarts == 1 and engine.pid != first_pid
    relaunch = events(log, "launch")[-1]
    argv = relaunch["argv"]
    assert argv[argv.index("--lora-paths") + 1 : argv.index("--lora-paths") + 2] == [f"alpha={alpha}"]
    assert "init" not in " ".join(argv)
    deltas = [d async for d in engine.chat(ChatRequest(messages=MESSAGES, adapter="alpha", stream=True))]
    assert deltas[0].text == "[alpha]"


async def test_child_failing_at_start(log: Path, tmp_path: Path) -> None:
    """A child that exits before it is healthy fails start() with EngineError."""
    eng = SGLangEngine(
        tmp_path / "model", "tiny", options=options(command=(sys.executable, "-c", "raise SystemExit(3)"))
    )
    with pytest.raises(EngineError, match="exited with status 3"):
        await eng.start()
    await eng.stop()


async def test_server_over_sglang(aiohttp_client, log: Path, tmp_path: Path) -> None:
    """Through the server: sync loads adapters via SGLang's API and streams pass through with version headers."""
    store = tmp_path / "store"
    make_adapter(store, "alpha-1", "alpha")
    publish(store, {"alpha": "alpha-1"}, active="alpha")
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options())
    client: TestClient = await start_client(aiohttp_client, server_config(adapter_store=store), eng)
    (load,) = events(log, "load")
    assert load["body"]["lora_name"].startswith("alpha-") and load["body"]["lora_path"] == str(
        store / "alpha-1"
    )
    resp = await client.post("/v1/chat/completions", json=chat_body("live", stream=True), headers=AUTH)
    assert resp.status == 200 and resp.headers["X-Adapter-Version"] == "alpha-1-v1"
    chunks = [json.loads(e) for e in sse_events(await resp.text())[:-1]]
    lora_name = load["body"]["lora_name"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == f"[{lora_name}] w0 w1 w2"
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny"), headers=AUTH)
    assert (await resp.json())["choices"][0]["message"]["content"] == "[base] w0 w1 w2"
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert 'inference_generated_tokens_total{model="alpha"} 4.0' in metrics  # counted on the pass-through
    publish(store, {}, active=None)
    assert (await (await client.post("/admin/sync", headers=ADMIN)).json())["retired"] == ["alpha"]
    await client.app[STATE].registry.wait_freed()
    assert [e["body"] for e in events(log, "unload")] == [{"lora_name": load["body"]["lora_name"]}]


async def test_server_503_while_child_restarts(aiohttp_client, log: Path, tmp_path: Path) -> None:
    """While the SGLang child is dead the server answers 503 with Retry-After, then serves again."""
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options(restart_backoff_s=0.3))
    client: TestClient = await start_client(aiohttp_client, server_config(), eng)
    os.kill(eng.pid, signal.SIGKILL)
    while eng.health().ready:
        await asyncio.sleep(0.01)
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    assert (await client.get("/ready", headers=AUTH)).status == 503
    for _ in range(500):
        if eng.health().ready:
            break
        await asyncio.sleep(0.02)
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)
    assert resp.status == 200 and (await resp.text()).endswith("data: [DONE]\n\n")


async def test_server_over_sglang_context_limits(aiohttp_client, log: Path, tmp_path: Path) -> None:
    """SGLang's own 400 for a prompt over its context becomes a 400 `context_length_exceeded`, streaming or not
    (not a 500); a configured limit refuses a max_tokens over it before SGLang sees the request."""
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options(extra_args=("--context-length", "5")))
    client: TestClient = await start_client(aiohttp_client, server_config(max_context_tokens=5), eng)
    long = {"model": "tiny", "messages": [{"role": "user", "content": "a b c d e f"}]}
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json={**long, "stream": stream}, headers=AUTH)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert "longer than the model's context length (5 tokens)" in error["message"]
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", max_tokens=6), headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "context_length_exceeded"
    assert len(events(log, "chat")) == 2
