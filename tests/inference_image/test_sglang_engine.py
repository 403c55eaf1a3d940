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


# -- issue #12: launch contract, start retries, in-stream errors, strict fake ------------------------------------
def fails_first(tmp_path: Path, times: int) -> tuple[str, ...]:
    """A command prefix whose first `times` launches exit 3 with a message, then run the fake."""
    counter = tmp_path / "launches"
    script = (f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; '
              f'if [ "$n" -lt {times} ]; then echo "boom $n" >&2; exit 3; fi; exec "$@"')
    return ("sh", "-c", script, "sh", *FAKE_COMMAND)


async def test_default_options_always_pass_rank_and_modules(log: Path, tmp_path: Path) -> None:
    """Without initial adapters (ACA's first launch) the command line still carries the rank and the modules, so
    the strict fake (like SGLang) starts; the relaunch after a crash passes the same set, not inferred ones."""
    eng = SGLangEngine(tmp_path / "model", "tiny", options=SGLangOptions(command=FAKE_COMMAND, restart_backoff_s=0.05))
    await eng.start()
    try:
        alpha = make_adapter(tmp_path / "store", "alpha-1", "alpha")
        await eng.load_adapter("alpha", alpha)
        os.kill(eng.pid, signal.SIGKILL)
        for _ in range(500):
            if eng.restarts == 1 and eng.health().ready:
                break
            await asyncio.sleep(0.02)
        assert eng.restarts == 1
    finally:
        await eng.stop()
    first, relaunch = (e["argv"] for e in events(log, "launch"))
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj"]
    for argv in (first, relaunch):
        assert argv[argv.index("--max-lora-rank") + 1] == "64"
        i = argv.index("--lora-target-modules")
        assert argv[i + 1 : i + 1 + len(modules)] == modules
    assert "--lora-paths" not in first and f"alpha={alpha}" in relaunch
    assert not events(log, "refused")


def test_fake_refuses_what_sglang_refuses(tmp_path: Path) -> None:
    """The fake exits 1 with SGLang's message for a LoRA launch without rank + modules (the old ACA command
    line), a served name with ':', 'all' beside other modules; it accepts the command lines the engine builds."""
    base = ["--model-path", str(tmp_path), "--port", "1", "--enable-lora"]
    refused = {
        "--max-lora-rank": [*base, "--max-lora-rank", "64"],
        "colon": [*base, "--served-model-name", "a:b", "--lora-paths", "x=/x"],
        "all": [*base, "--max-lora-rank", "8", "--lora-target-modules", "all", "q_proj"],
    }
    for expected, argv in refused.items():
        assert expected in (fake_sglang.check_args(fake_sglang.parse_args(argv)[0]) or "")
    eng = SGLangEngine(tmp_path / "model", "tiny", options=SGLangOptions(command=()))
    ok = eng.launch_args(1)[3:]
    assert fake_sglang.check_args(fake_sglang.parse_args(ok)[0]) is None


async def test_start_retries_with_backoff_then_serves(log: Path, tmp_path: Path) -> None:
    """Two failed launches are retried (backoff doubling) and reported in health detail; the third serves."""
    eng = SGLangEngine(tmp_path / "model", "tiny",
                       options=options(command=fails_first(tmp_path, 2), restart_backoff_s=0.2, start_attempts=4))
    details: list[str] = []
    task = asyncio.create_task(eng.start())
    while not task.done():
        details.append(eng.health().detail)
        await asyncio.sleep(0.02)
    await task
    try:
        assert eng.health().ready and not eng.failed
        assert any("attempt 1/4 failed" in d and "boom 0" in d and "retrying in 0.2 s" in d for d in details)
        assert any("attempt 2/4 failed" in d and "boom 1" in d and "retrying in 0.4 s" in d for d in details)
        assert len(events(log, "launch")) == 1
    finally:
        await eng.stop()


async def test_start_gives_up_and_health_fails(aiohttp_client, log: Path, tmp_path: Path) -> None:
    """After start_attempts failed launches the engine is `failed`: /ready says why, /health answers 503 (the
    liveness probe restarts the container)."""
    eng = SGLangEngine(tmp_path / "model", "bad:name", options=options(start_attempts=2, restart_backoff_s=0.05))
    app = __import__("inference_server.api_router", fromlist=["create_app"]).create_app(server_config(), eng)
    client: TestClient = await aiohttp_client(app)
    for _ in range(500):
        if eng.failed:
            break
        await asyncio.sleep(0.02)
    assert eng.failed and len(events(log, "refused")) == 2
    health = await client.get("/health")
    assert health.status == 503 and (await health.json()) == {"status": "failed"}
    ready = await client.get("/ready", headers=AUTH)
    detail = (await ready.json())["engine"]["detail"]
    assert ready.status == 503 and "failed 2 times in a row" in detail and "cannot contain a colon" in detail


async def test_health_503_while_loading(log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake answers /health 503 while it loads, as SGLang does; start() waits for the 200."""
    monkeypatch.setenv("FAKE_SGLANG_STARTUP_DELAY", "0.6")
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options(health_interval_s=0.05))
    started = asyncio.get_running_loop().time()
    await eng.start()
    try:
        assert asyncio.get_running_loop().time() - started >= 0.6 and eng.health().ready
    finally:
        await eng.stop()


async def test_chat_raises_on_in_stream_error(engine: SGLangEngine) -> None:
    """An error event inside SGLang's 200 stream is an EngineError from chat(), never a silent 'stop'."""
    req = ChatRequest(messages=[{"role": "user", "content": "FAIL_MID_STREAM"}], stream=True)
    deltas = []
    with pytest.raises(EngineError, match="failed on purpose") as info:
        async for delta in engine.chat(req):
            deltas.append(delta)
    assert not isinstance(info.value, EngineNotReady)
    assert "".join(d.text for d in deltas) == "[base] w0" and all(d.finish_reason is None for d in deltas)


def test_find_sse_error_shapes() -> None:
    """Both SGLang shapes are found at their event's offset; content that merely mentions "error" is not."""
    from inference_server.engines.base import EngineRequestError
    from inference_server.engines.sglang_engine import find_sse_error

    token = b'data: {"choices":[{"delta":{"content":"\\"error\\": no"}}]}\n\n'
    nested = b'data: {"error": {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}}\n\n'
    flat = b'data: {"object":"error","message":"oom","type":"InternalServerError","code":500}\n\n'
    assert find_sse_error(token) is None and find_sse_error(token + b"data: [DONE]\n\n") is None
    offset, error = find_sse_error(token + nested + b"data: [DONE]\n\n")
    assert offset == len(token) and isinstance(error, EngineRequestError) and str(error) == "too long"
    offset, error = find_sse_error(flat)
    assert offset == 0 and not isinstance(error, EngineRequestError) and "oom" in str(error)


async def test_server_relays_in_stream_error(aiohttp_client, log: Path, tmp_path: Path) -> None:
    """Pass-through: the tokens before SGLang's error event reach the client, then an OpenAI-shaped error event,
    and the stream ends there (no [DONE]); the next request on the pool is served normally."""
    eng = SGLangEngine(tmp_path / "model", "tiny", options=options())
    client: TestClient = await start_client(aiohttp_client, server_config(), eng)
    body = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "FAIL_MID_STREAM"}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status == 200
    payloads = sse_events(await resp.text())
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "[base] w0"
    assert json.loads(payloads[-1]) == {"error": {"message": "The engine failed to generate a response",
                                                  "type": "server_error", "param": None, "code": "engine_error"}}
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert 'inference_errors_total{type="engine_error"} 1.0' in metrics
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)
    assert (await resp.text()).endswith("data: [DONE]\n\n")
    resp = await client.post("/v1/chat/completions", json={**body, "stream": False}, headers=AUTH)
    assert resp.status == 503
