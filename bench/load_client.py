"""The load client for chat_overhead.py: C keep-alive connections sending streaming chat requests back to back.

Built on asyncio protocols (an HTTP/1.1 response parser that only frames chunks, never decodes SSE) so that, like a
C load generator, it leaves the machine's CPU to the servers under test: with aiohttp's client the load generator
alone took a core at C=256 and the ratio measured who won the CPU rather than what the proxy costs. Each request
records its time to the first body chunk, its total time to the last chunk and the number of chunks; a response
that is not a complete `200` chunked stream counts as failed.

    python bench/load_client.py URL [--concurrency 16] [--duration 3] [--auth KEY] [--model tiny]

prints one JSON summary line: ok, failed, first_error, sent (every request, warm-up included), rps, p50, p99,
ttft_p50 (seconds), chunks_p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Result:
    ok: bool
    latency: float = 0.0
    ttft: float = 0.0
    chunks: int = 0
    error: str = ""


class Connection(asyncio.Protocol):
    """One keep-alive connection; `send()` starts a request and returns a future of its `Result`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self._future: asyncio.Future[Result] | None = None
        self._started = self._first = 0.0
        self._chunks = 0
        self._in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self._done(Result(False, error=f"connection lost: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, message: bytes) -> asyncio.Future[Result]:
        assert self.transport is not None
        self._future = asyncio.get_running_loop().create_future()
        self._buffer, self._chunks, self._in_body, self._first = b"", 0, False, 0.0
        self._started = time.perf_counter()
        self.transport.write(message)
        return self._future

    def _done(self, result: Result) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(result)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        pos = 0
        if not self._in_body:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buf
                return
            head = buf[:end].decode("latin-1")
            pos = end + 4
            if not head.startswith("HTTP/1.1 200"):
                self._done(Result(False, error=head.split("\r\n", 1)[0]))  # the worker drops the connection
                return
            if "chunked" not in head.lower():
                self._done(Result(False, error="response is not chunked"))
                return
            self._in_body = True
        now = 0.0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < eol + 4:
                    break
                now = now or time.perf_counter()
                self._done(Result(True, now - self._started, self._first - self._started, self._chunks))
                self._buffer = b""
                return
            if len(buf) < eol + 2 + size + 2:
                break
            if self._chunks == 0:
                now = self._first = time.perf_counter()
            self._chunks += 1
            pos = eol + 2 + size + 2
        self._buffer = buf[pos:]


def request_bytes(url: str, model: str, api_key: str | None) -> bytes:
    parts = urlsplit(url)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 128,
                       "stream": True}).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{auth}\r\n")
    return head.encode("latin-1") + body


async def run_load(url: str, model: str, api_key: str | None, concurrency: int, duration_s: float) -> dict[str, object]:
    """C workers, one connection each, send requests back to back; measured for `duration_s`.

    A warm-up request per connection gives the response time T; the workers then start T/C apart, so requests
    arrive spread over time as real clients' do. Started together, equal-length streams would stay in lockstep
    for the whole run (a closed loop keeps its phase), and every server would face bursts of C requests at once.
    Only requests started after the last worker's start are counted."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    message = request_bytes(url, model, api_key)
    measure_from = deadline = 0.0
    sent = 0

    async def worker(delay_s: float, measure: bool) -> list[Result]:
        nonlocal sent
        await asyncio.sleep(delay_s)
        done: list[Result] = []
        conn: Connection | None = None
        while True:
            if conn is None or conn.lost.done():
                _, conn = await loop.create_connection(Connection, parts.hostname, parts.port)
            started = time.perf_counter()
            result = await conn.send(message)
            sent += 1
            if not measure or started >= measure_from:
                done.append(result)
            if not result.ok and conn.transport is not None:  # its unread rest would garble the next answer
                conn.transport.close()
                conn = None
            if not measure or time.perf_counter() >= deadline:
                break
        if conn is not None and conn.transport is not None:
            conn.transport.close()
        return done

    warm = [r for rs in await asyncio.gather(*(worker(0, False) for _ in range(concurrency))) for r in rs]
    spread_s = statistics.median(r.latency for r in warm if r.ok) if any(r.ok for r in warm) else 0.0
    measure_from = time.perf_counter() + spread_s
    deadline = measure_from + duration_s
    workers = (worker(k * spread_s / concurrency, True) for k in range(concurrency))
    results = [r for rs in await asyncio.gather(*workers) for r in rs]
    elapsed = time.perf_counter() - measure_from
    ok = [r for r in results if r.ok]
    latencies = sorted(r.latency for r in ok)
    errors = [r.error for r in results if not r.ok]
    return {
        "ok": len(ok), "failed": len(errors), "first_error": errors[0] if errors else "", "sent": sent,
        "rps": len(ok) / elapsed,
        "p50": statistics.median(latencies) if ok else float("nan"),
        "p99": latencies[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan"),
        "ttft_p50": statistics.median(r.ttft for r in ok) if ok else float("nan"),
        "chunks_p50": statistics.median(r.chunks for r in ok) if ok else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--auth", help="API key to send as a bearer token")
    p.add_argument("--model", default="tiny")
    args = p.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(run_load(args.url, args.model, args.auth, args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
