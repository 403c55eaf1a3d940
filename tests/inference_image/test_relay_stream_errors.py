"""relay.py + serving.py (issue #12): an SGLang error event inside a 200 stream ends the relayed stream with an
OpenAI-shaped error event, whatever the upstream's framing, and the connection is never reused."""

from __future__ import annotations

import asyncio
import json

import pytest

from inference_server.api_router import STATE
from tests.fakes.harness import sse_events
from tests.inference_image.test_relay import SSE_HEAD, RawUpstream, chunk, event, metric, server_over, stream

SGLANG_ERROR = (b'data: {"error": {"object": "error", "message": "The input is too long.", "type": "BadRequestError", '
                b'"param": null, "code": 400}}\n\n')
OOM_ERROR = b'data: {"object": "error", "message": "CUDA out of memory", "type": "InternalServerError", "code": 500}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("framing", ["chunked", "chunked-one-piece", "content-length"])
async def test_error_event_ends_the_stream(aiohttp_client, framing: str) -> None:
    """Tokens before the error pass, SGLang's 400-coded error becomes an invalid_request_error event with its
    message, nothing after it (no [DONE]); a fresh upstream connection serves the next stream."""
    pieces = [event("a"), event("b"), SGLANG_ERROR, DONE]

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        if framing == "content-length":
            body = b"".join(pieces)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(body), body))
        elif framing == "chunked-one-piece":
            writer.write(SSE_HEAD + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")
        else:
            writer.write(SSE_HEAD)
            for piece in pieces:
                writer.write(chunk(piece))
                await writer.drain()
                await asyncio.sleep(0.005)
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        resp = await stream(client)
        assert resp.status == 200
        payloads = sse_events(await resp.text())
        assert [json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:2]] == ["a", "b"]
        assert json.loads(payloads[2]) == {"error": {"message": "The input is too long.", "type":
                                                     "invalid_request_error", "param": None, "code": "BadRequestError"}}
        assert len(payloads) == 3
        assert await metric(client, 'inference_generated_tokens_total{model="tiny"} 2.0')
        assert await metric(client, 'inference_errors_total{type="BadRequestError"} 1.0')
        assert client.app[STATE].versions.snapshot()["tiny"]["errors"] == 0  # a refused request: the client's 4xx
        opened = upstream.connections
        resp = await stream(client)
        assert sse_events(await resp.text())[2].startswith('{"error"')
        assert upstream.connections == opened + 1  # the cut connection was closed, not pooled


async def test_server_error_is_generic_and_content_mentioning_error_passes(aiohttp_client) -> None:
    """A 5xx-coded error event (older flat shape) becomes the generic engine error; a token whose text mentions
    "error" is content, not an error event."""
    pieces = [event('"error": fine'), OOM_ERROR, DONE]

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> bool:
        writer.write(SSE_HEAD + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")
        await writer.drain()
        return True

    async with RawUpstream(respond) as upstream:
        client = await server_over(aiohttp_client, upstream.url)
        payloads = sse_events(await (await stream(client)).text())
        assert json.loads(payloads[0])["choices"][0]["delta"]["content"] == '"error": fine'
        assert json.loads(payloads[1])["error"]["code"] == "engine_error" and len(payloads) == 2
        counted = client.app[STATE].versions.snapshot()["tiny"]  # per-version counters of the replica report
        assert (counted["requests"], counted["errors"], sum(counted["ttft_ms"]["counts"])) == (1, 1, 1)
