"""Connection timeouts of the real listener, over raw loopback sockets: a stalled request head is cut at the header
timeout, an idle keep-alive connection at the idle timeout, and a long response at neither."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from inference_server.api_router import STATE, create_app
from inference_server.listener import Listener, listen
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import AUTH, chat_body, server_config

HEADER_S, IDLE_S = 0.3, 1.5
HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


async def start() -> Listener:
    engine = EchoEngine(tokens=8, delay_s=0.1)  # a stream lasts 0.8 s, past the header timeout
    config = server_config(host="127.0.0.1", header_timeout_s=HEADER_S, idle_timeout_s=IDLE_S)
    listener = await listen(create_app(config, engine), config)
    for _ in range(500):
        if listener.runner.app[STATE].started:
            break
        await asyncio.sleep(0.01)
    return listener


@pytest.fixture
async def server() -> AsyncIterator[Listener]:
    listener = await start()
    yield listener
    await listener.close()


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (nothing more may arrive)."""
    start = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass
    return time.monotonic() - start


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.mark.parametrize("partial", [b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: te"])
async def test_stalled_head_is_cut_at_the_header_timeout(server: Listener, partial: bytes) -> None:
    """A connection that sends nothing, half a request line or half its headers is closed after the header
    timeout, well before the idle timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(partial)
    assert HEADER_S * 0.8 < await closed_after(reader) < IDLE_S * 0.8
    writer.close()


def test_stalled_head_under_uvloop() -> None:
    """The same with uvloop's transports, as `python -m inference_server` runs: a response, then a stalled head."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        server = await start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(HEALTH)
            assert b'"alive"' in await read_response(reader)
            writer.write(b"GET /he")
            assert await closed_after(reader) < IDLE_S * 0.8
            writer.close()
        finally:
            await server.close()

    uvloop.run(scenario())


async def test_idle_keep_alive_is_closed_at_the_idle_timeout(server: Listener) -> None:
    """After a response the connection stays open for reuse until the idle timeout, not the header timeout; the
    next request head then has the header timeout again."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HEALTH)
    assert b'"alive"' in await read_response(reader)
    await asyncio.sleep(HEADER_S * 2)
    writer.write(HEALTH)  # still open: reused
    assert b'"alive"' in await read_response(reader)
    assert IDLE_S * 0.8 < await closed_after(reader) < IDLE_S + 1.5
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HEALTH)
    await read_response(reader)
    await asyncio.sleep(HEADER_S * 2)
    writer.write(b"GET /he")
    assert await closed_after(reader) < HEADER_S * 2  # the idle timer alone would wait IDLE_S - HEADER_S * 2
    writer.close()


async def test_long_stream_outlives_the_header_timeout(server: Listener) -> None:
    """A response that takes longer than the header timeout is not cut."""
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{server.port}/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH
    ) as resp:
        assert resp.status == 200
        assert (await resp.text()).endswith("data: [DONE]\n\n")
