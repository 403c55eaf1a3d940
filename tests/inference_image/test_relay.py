"""relay.py: the socket-level upstream client and SSE relay, alone and through the server with the SGLang engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from inference_server.api_router import STATE, create_app
from inference_server.engines.sglang_engine import SGLangEngine, SGLangOptions
from inference_server.relay import UpstreamError, UpstreamPool
from inference_server.state import ServerState
from tests.fakes import fake_sglang
from tests.fakes.harness import AUTH, chat_body, server_config, sse_events, start_client

Respond = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def event(text: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


DONE = b"data: [DONE]\n\n"
EVENTS = [event("a"), event("b"), event("c"), DONE]


class RawUpstream:
    """A scripted HTTP/1.1 upstream on asyncio streams: `GET /health` answers 200, every other request is
    answered by `respond(reader, writer, body)`, which returns whether the connection stays open."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.connections = 0  # connections accepted so far
        self.responding = 0  # responses being written now
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next((int(line.split(":")[1]) for line in head.split("\r\n")
                               if line.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length)
                if head.startswith("GET /health "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.responding += 1
                try:
                    keep = await self.respond(reader, writer, body)
                finally:
                    self.responding -= 1
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def server_over(aiohttp_client, url: str, **options: object) -> TestClient:
    """Our server with the SGLang engine attached to `url`."""
    eng = SGLangEngine(None, "tiny", options=SGLangOptions(upstream_url=url, **options))  # type: ignore[arg-type]
    return await start_client(aiohttp_client, server_config(), eng)


async def stream(client: TestClient) -> aiohttp.ClientResponse:
    return await client.post("/v1/chat/completions", json=chat_body("tiny", stream=True), headers=AUTH)


async def metric(client: TestClient, line: str) -> bool:
    return line in await (await client.get("/metrics", headers=AUTH)).text()


# -- the pool on its own --------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
async def test_chunked_and_content_length_bodies(split: bool) -> None:
    """Chunked (with extensions and trailers) and Content-Length bodies decode, however the bytes are split;
    sequential requests share one keep-alive connection."""
    body = b"".join(EVENTS)
    answers = [
        SSE_HEAD + chunk(EVENTS[0]) + b"6;ext=1\r\ndata: \r\n" + chunk(EVENTS[1][6:]) + chunk(EVENTS[2])
        + chunk(EVENTS[3]) + b"0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body),
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        answer = answers.pop(0)
        for piece in [answer[i : i + 1] for i in range(len(answer))] if split else [answer]:
            writer.write(piece)
            await writer.drain()
        return True

    async with RawUpstream(respond) as upstream:
        pool = UpstreamPool(upstream.url)
        results = []
        for _ in range(3):
            conn = await pool.request("POST", "/v1/chat/completions", b"{}")
            results.append((conn.status, await conn.read()))
            conn.release()
        pool.close()
    assert results == [(200, body), (200, body), (204, b"")]
    assert pool.opened == 1 and upstream.connections == 1


async def test_stale_connection_is_retried() -> None:
    """A pooled connection that the upstream drops when the next request arrives is retried on a fresh one."""
    served: list[asyncio.StreamWriter] = []  # held, not their id()s: a collected writer's id can come back

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        if any(seen is writer for seen in served):
            return False  # close without answering
        served.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with RawUpstream(respond) as upstream:
        pool = UpstreamPool(upstream.url)
        for _ in range(2):
            conn = await pool.request("POST", "/v1/chat/completions", b"{}")
            assert await conn.read() == b"ok"
            conn.release()
        pool.close()
    assert pool.opened == 2 and upstream.connections == 2


async def test_unreachable_and_idle_timeout() -> None:
    """A silent upstream, a garbled head and a refused connection are UpstreamErrors; nothing is pooled."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        writer.write(SSE_HEAD + chunk(EVENTS[0]))
        await asyncio.sleep(5)
        return False

    async with RawUpstream(silent) as upstream:
        url = upstream.url
        pool = UpstreamPool(url, read_timeout_s=0.2)
        conn = await pool.request("POST", "/v1/chat/completions", b"{}")
        with pytest.raises(UpstreamError, match="sent nothing"):
            await conn.read()
        conn.release()
        assert pool.opened == 1 and not pool._idle
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n")
        return True

    async with RawUpstream(garbled) as upstream:
        with pytest.raises(UpstreamError, match="malformed upstream response head"):
            await UpstreamPool(upstream.url).request("POST", "/v1/chat/completions", b"{}")
    with pytest.raises(UpstreamError, match="cannot connect"):
        await UpstreamPool(url).request("GET", "/health")


# -- through the server -------------------------------------------------------------------------------------
@pytest.fixture
async def fake_url(aiohttp_server) -> str:
    args, _ = fake_sglang.parse_args(["--model-path", "tiny", "--served-model-name", "tiny", "--tokens", "16"])
    server: TestServer = await aiohttp_server(fake_sglang.build_app(args, None))
    return f"http://127.0.0.1:{server.port}"


async def test_fake_sglang_streams_and_keep_alive(aiohttp_client, fake_url: str) -> None:
    """The fake's chunked SSE reaches the client unchanged, sequential streams reuse one upstream connection,
    and the tokens are counted."""
    client = await server_over(aiohttp_client, fake_url)
    engine = client.app[STATE].engine
    for _ in range(3):
        resp = await stream(client)
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        chunks = [json.loads(e) for e in sse_events(await resp.text())[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == "[base]" + "".join(f" w{i}" for i in range(15))
    assert engine._pool.opened == 1  # /health and three streams, one after the other
    assert await metric(client, 'inference_generated_tokens_total{model="tiny"} 48.0')


async def test_256_concurrent_streams(aiohttp_client, fake_url: str) -> None:
    """256 streams at once all complete, each on its own upstream connection, all counted."""
    client = await server_over(aiohttp_client, fake_url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> str:
            async with session.post(client.make_url("/v1/chat/completions"), headers=AUTH,
                                    json=chat_body("tiny", stream=True)) as resp:
                assert resp.status == 200
                return await resp.text()

        bodies = await asyncio.gather(*(one() for _ in range(256)))
    assert all(body.endswith("data: [DONE]\n\n") and body.count("data: ") == 19 for body in bodies)
    assert client.app[STATE].engine._pool.opened <= 257
    assert await metric(client, 'inference_generated_tokens_total{model="tiny"} 4096.0')


async def test_content_length_upstream_is_reframed(aiohttp_client) -> None:
    """A Content-Length SSE body is relayed as chunks to the client."""
    body = b"".join(EVENTS)

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body))
        for piece in EVENTS:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        resp = await stream(client)
        assert resp.headers["Transfer-Encoding"] == "chunked" and await resp.read() == body
        assert await metric(client, 'inference_generated_tokens_total{model="tiny"} 3.0')


@pytest.mark.parametrize("tail", [b"", b"40\r\ndata: {\"cho"], ids=["between-chunks", "mid-chunk"])
async def test_upstream_dies_mid_stream(aiohttp_client, tail: bytes) -> None:
    """An upstream that closes mid-stream: the client gets the whole chunks so far, an error event and a clean
    end (never a partial chunk); the next request opens a new connection and succeeds."""
    broken = [True]

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        if broken.pop() if broken else False:
            writer.write(SSE_HEAD + chunk(EVENTS[0]) + chunk(EVENTS[1]) + tail)
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        writer.write(SSE_HEAD + b"".join(map(chunk, EVENTS)) + b"0\r\n\r\n")
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        resp = await stream(client)
        events = sse_events(await resp.text())
        assert resp.status == 200 and [e.encode() for e in events[:2]] == [e[6:-2] for e in EVENTS[:2]]
        assert len(events) == 3 and json.loads(events[2])["error"]["type"] == "server_error"
        resp = await stream(client)
        assert (await resp.text()).endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(("status", "client_status"), [(500, 500), (400, 500), (503, 503), (429, 503)])
async def test_upstream_error_status(aiohttp_client, status: int, client_status: int) -> None:
    """Non-200 answers map as before (busy: 503 with Retry-After; others: 500); the connection is reused."""
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        body = b'{"object":"error","message":"nope"}'
        writer.write(b"HTTP/1.1 %d Oops\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body))
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        for _ in range(2):
            resp = await stream(client)
            assert resp.status == client_status and "error" in await resp.json()
        assert (client_status == 503) == ("Retry-After" in resp.headers)
        assert upstream.connections == 1


async def test_upstream_unreachable_is_503(aiohttp_client) -> None:
    """An upstream that stops listening: 503 before any byte, as before."""
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url, connect_timeout_s=1.0)
    client.app[STATE].engine._pool.close()
    resp = await stream(client)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"


def endless(sent: list[int], piece: bytes, pause_s: float) -> Respond:
    """An upstream that streams `piece` as chunks until the connection breaks, adding each one's size to sent[0]."""
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        writer.write(SSE_HEAD)
        while True:
            writer.write(chunk(piece))
            await writer.drain()
            sent[0] += len(piece)
            await asyncio.sleep(pause_s)

    return respond


@contextlib.asynccontextmanager
async def production_server(url: str) -> AsyncIterator[tuple[str, ServerState]]:
    """Our server over `url` run as __main__ runs it: handlers are not cancelled when their client goes away
    (aiohttp's test server cancels them). Yields its base URL and state."""
    app = create_app(server_config(), SGLangEngine(None, "tiny", options=SGLangOptions(upstream_url=url)))
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await wait_for(lambda: app[STATE].started)
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", app[STATE]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("cancelled", [False, True], ids=["handler-runs-on", "handler-cancelled"])
async def test_client_disconnect_closes_upstream(
    aiohttp_client, caplog: pytest.LogCaptureFixture, cancelled: bool
) -> None:
    """A client that goes away mid-stream: the upstream connection is closed, not pooled."""
    caplog.set_level(logging.INFO, "inference_server")
    sent = [0]
    async with RawUpstream(endless(sent, EVENTS[0], 0.01)) as upstream, contextlib.AsyncExitStack() as stack:
        if cancelled:
            client = await server_over(aiohttp_client, upstream.url)
            base, state = str(client.make_url("")), client.app[STATE]
        else:
            base, state = await stack.enter_async_context(production_server(upstream.url))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        resp = await session.post(base.rstrip("/") + "/v1/chat/completions", json=chat_body("tiny", stream=True),
                                  headers=AUTH)
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        assert upstream.responding == 1
        resp.close()
        await wait_for(lambda: upstream.responding == 0)
        await wait_for(lambda: state.in_flight == 0)
        assert not state.engine._pool._idle  # the stream reused the /health connection, then dropped it
        assert "engine failed" not in caplog.text
        assert cancelled or "client went away mid-stream" in caplog.text


async def test_slow_reader_backpressure(aiohttp_client) -> None:
    """A client that stops reading stalls the upstream: bytes in flight stay bounded (socket buffers plus the
    transport's high-water mark), then everything flows again when it reads."""
    sent = [0]
    piece = b"data: " + b"x" * 65536 + b"\n\n"
    async with RawUpstream(endless(sent, piece, 0)) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        body = json.dumps(chat_body("tiny", stream=True)).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: %b\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                     % (AUTH["Authorization"].encode(), len(body), body))
        received = len(await reader.readexactly(1 << 20))
        stalled = -1
        async with asyncio.timeout(10):  # stop reading: buffers fill up, then the upstream must stall
            while sent[0] != stalled:
                stalled = sent[0]
                await asyncio.sleep(0.3)
        assert stalled - received < 64 << 20
        for _ in range(64):
            received += len(await reader.readexactly(1 << 20))
        assert sent[0] > stalled + (32 << 20)
        writer.close()
        await wait_for(lambda: upstream.responding == 0)
