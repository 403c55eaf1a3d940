"""The streaming upstream for chat_overhead.py: an SGLang-shaped SSE server that paces tokens like a batching engine.

A real engine produces tokens in decode steps: every `--token-delay` seconds each running request gets its next
token, whoever reads the socket and however fast. This server does the same with one shared clock: streams that
started are advanced together on each step, at absolute times, so a slow or preempted reader never slows the
generation down (a per-request `sleep(delay)` loop drifts by the reader's own wake-up cost and would charge that
to the proxy). It is built on asyncio protocols with pre-framed chunks so that its own CPU cost, which shares the
machine with the proxy under test, stays small.

    python bench/stream_upstream.py PORT [--tokens 64] [--token-delay 0.002]

`GET /health` answers 200; `POST /v1/chat/completions` answers the SSE stream (`chat.completion.chunk` events, then
`data: [DONE]`) with HTTP/1.1 chunked framing and keep-alive, as SGLang does; the request body is not interpreted.
"""

from __future__ import annotations

import argparse
import asyncio
import json

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
LAST = b"0\r\n\r\n"


def framed_events(model: str, tokens: int) -> list[bytes]:
    """The whole SSE stream, one HTTP chunk per event: role, `tokens` words, finish, usage, [DONE]."""

    def event(choices: list[dict[str, object]], **extra: object) -> bytes:
        body = {"id": "bench", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices,
                **extra}
        data = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(data), data)

    def delta(content: dict[str, str], finish: str | None = None) -> bytes:
        return event([{"index": 0, "delta": content, "finish_reason": finish}])

    events = [delta({"role": "assistant", "content": ""})] + [delta({"content": f" w{i}"}) for i in range(tokens)]
    events.append(delta({}, "stop"))
    events.append(event([], usage={"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}))
    data = b"data: [DONE]\n\n"
    return events + [b"%x\r\n%s\r\n%s" % (len(data), data, LAST)]


class Engine:
    """The shared decode clock: every step, each running stream is sent its next event."""

    def __init__(self, events: list[bytes], step_s: float) -> None:
        self.events, self.step_s = events, step_s
        self.running: dict[asyncio.Transport, int] = {}
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()

    def admit(self, transport: asyncio.Transport) -> None:
        transport.write(HEAD)
        if not self.running:  # the clock stops when nothing runs (a step is scheduled exactly while some stream is)
            self._next = self._loop.time() + self.step_s
            self._loop.call_at(self._next, self._step)
        self.running[transport] = 0

    def _step(self) -> None:
        last = len(self.events) - 1
        for transport, index in list(self.running.items()):
            if transport.is_closing():
                del self.running[transport]
                continue
            transport.write(self.events[index])
            if index == last:
                del self.running[transport]
            else:
                self.running[transport] = index + 1
        if not self.running:
            return
        # Absolute schedule: a late step does not push the next ones back (nor are missed steps replayed).
        self._next = max(self._next + self.step_s, self._loop.time())
        self._loop.call_at(self._next, self._step)


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive: requests are read one at a time (the next is read once its answer is started)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.answer(head.split(" ", 2)[:2])

    def answer(self, request_line: list[str]) -> None:
        assert self.transport is not None
        if request_line == ["POST", "/v1/chat/completions"]:
            self.engine.admit(self.transport)
        elif request_line == ["GET", "/health"]:
            self.transport.write(HEALTH)
        else:
            self.transport.write(NOT_FOUND)


async def serve(port: int, tokens: int, step_s: float, model: str) -> None:
    engine = Engine(framed_events(model, tokens), step_s)
    server = await asyncio.get_running_loop().create_server(lambda: Connection(engine), "127.0.0.1", port,
                                                            backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--token-delay", type=float, default=0.002)
    p.add_argument("--model", default="tiny")
    args = p.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.tokens, args.token_delay, args.model))


if __name__ == "__main__":
    main()
