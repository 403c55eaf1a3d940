"""Graceful shutdown: running streams finish, new requests get 503, then the engine stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from inference_server.api_router import STATE, create_app
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import AUTH, chat_body, server_config, start_client


async def test_drain_refuses_new_and_finishes_running(aiohttp_client) -> None:
    """While draining, a new chat gets 503 + Retry-After and /ready 503; the running stream completes."""
    engine = EchoEngine(tokens=15, delay_s=0.02)
    client = await start_client(aiohttp_client, server_config(), engine)
    state = client.app[STATE]
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)
    await resp.content.readuntil(b"\n\n")
    drain = asyncio.create_task(state.drain(5.0))
    await asyncio.sleep(0.01)
    refused = await client.post("/v1/chat/completions", json=chat_body("tiny"), headers=AUTH)
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert (await refused.json())["error"]["message"] == "The server is shutting down"
    assert (await client.get("/ready", headers=AUTH)).status == 503
    assert not drain.done()
    text = await resp.text()
    assert " t14" in text and text.endswith("data: [DONE]\n\n")
    assert await drain is True


async def test_drain_times_out(aiohttp_client) -> None:
    """Drain gives up after its timeout when a stream outlives it."""
    client = await start_client(aiohttp_client, server_config(), EchoEngine(tokens=50, delay_s=0.02))
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)
    await resp.content.readuntil(b"\n\n")
    assert await client.app[STATE].drain(0.05) is False
    resp.close()


async def test_shutdown_drains_streams_then_stops_engine() -> None:
    """Runner cleanup (what SIGTERM triggers) lets an open stream finish before the engine stops."""
    engine = EchoEngine(tokens=20, delay_s=0.02)
    app = create_app(server_config(), engine)
    runner = web.AppRunner(app, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    while not app[STATE].started:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with session.post(url, json=chat_body("tiny", stream=True), headers=AUTH) as resp:
            await resp.content.readuntil(b"\n\n")
            cleanup = asyncio.create_task(runner.cleanup())
            text = await resp.text()
        assert " t19" in text and text.endswith("data: [DONE]\n\n")
    await cleanup
    assert engine.ready is False


async def test_client_disconnect_releases_request(aiohttp_client, tmp_path: Path) -> None:
    """A client that hangs up mid-stream stops the generation and frees its in-flight slot."""
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    engine = EchoEngine(tokens=200, delay_s=0.01)
    client = await start_client(aiohttp_client, server_config(adapter_store=tmp_path), engine)
    state = client.app[STATE]
    resp = await client.post("/v1/chat/completions", json=chat_body("live", stream=True), headers=AUTH)
    await resp.content.readuntil(b"\n\n")
    assert state.in_flight == 1 and state.registry.in_flight(state.registry.active_ref) == 1
    resp.close()
    for _ in range(200):
        if state.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert state.in_flight == 0 and state.registry.in_flight(state.registry.active_ref) == 0
    assert sum(engine.in_use.values()) == 0
