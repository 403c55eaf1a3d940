"""A small HTTP/1.1 client on asyncio Protocols for one loopback upstream, built to relay SSE streams cheaply.

`UpstreamPool.request()` sends one request on a pooled keep-alive connection and returns that connection once the
status line and headers are in (`UpstreamConnection.status`, `.headers`). Its body is then consumed one of two ways:

* `forward(writer, transport, count)` relays it to an aiohttp response from the read callback, with no task switch
  per event: when both sides are chunked the upstream's chunk framing is written to the client's transport as is
  (whole chunks only, so the client's framing stays valid whatever happens upstream); otherwise the payload is
  (re)framed. Reading pauses while the client's transport is over its high-water mark (aiohttp's own `drain()`
  waits for it to come down); a client that went away aborts the upstream connection.
* `iter_body()` / `read()` yield the decoded body (chunked, Content-Length or close-delimited).

`release()` returns the connection to the pool only after a complete response; anything else closes it. Errors are
`UpstreamError`s (an `EngineError`): connecting, a broken or malformed response, the idle read timeout.

Errors inside a 200 body (SGLang reports a failure after streaming began as an SSE error event): the caller arms
`watch_errors(marker, find)`; `forward()` then tests every delivered piece for `marker` (one substring search), and
only where it occurs decodes the piece and asks `find(payload)` for `(offset, error)`. On a hit the payload before
`offset` is written, then `on_error(error)` (the caller's own event), and the relay ends there: `stream_error` holds
the error and the connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from .engines.base import EngineError

if TYPE_CHECKING:
    from aiohttp import web

MAX_HEAD = 64 * 1024  # status line + headers
BUFFER_LIMIT = 256 * 1024  # decoded body held for a slow iter_body() consumer before reading pauses

# Response phases and body framings.
HEAD, BODY, DONE = 0, 1, 2
CHUNKED, LENGTH, UNTIL_CLOSE = 0, 1, 2
# Body consumers: nobody yet (bytes are kept raw), iter_body(), forward().
NONE, BUFFER, FORWARD = 0, 1, 2


class UpstreamError(EngineError):
    """The upstream could not be reached, broke the connection, or sent something that is not HTTP/1.1."""


class ClientGone(ConnectionResetError):
    """The downstream client closed its connection while a body was being forwarded."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream and the response being read on it (one request at a time)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.received = False  # any byte of the current response arrived
        self.counted = 0  # sum of `count(bytes)` over the forwarded body
        self.first_byte_at: float | None = None  # perf_counter() at the first forwarded body byte
        self._phase = DONE
        self._framing = CHUNKED
        self._left = 0  # Content-Length bytes still to come
        self._reusable = False
        self._closed = False
        self._lost_cleanly = False
        self._pending = b""  # unconsumed bytes (the head, a partial chunk, or the raw body before a consumer)
        self._consumer = NONE
        self._decoded: list[bytes] = []
        self._decoded_size = 0
        self._down: asyncio.Transport | None = None
        self._down_high = 0
        self._raw = False  # forward the upstream's chunk framing unchanged
        self._reframe = False  # frame payload bytes as chunks for the client
        self._count: Callable[[bytes], int] | None = None
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._active = False
        self._timer: asyncio.TimerHandle | None = None
        self._marker: bytes | None = None
        self._find: Callable[[bytes], tuple[int, EngineError] | None] | None = None
        self._on_error: Callable[[EngineError], bytes] | None = None
        self.stream_error: EngineError | None = None  # an error event ended the forwarded body

    # -- asyncio.Protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed, self._lost_cleanly = True, exc is None
        self._cancel_timer()
        self._pool.forget(self)
        if self._consumer != NONE or self._phase == HEAD:  # else the raw body waits for its consumer
            self._on_eof()

    def _on_eof(self) -> None:
        if self._phase == BODY and self._framing == UNTIL_CLOSE and self._lost_cleanly:
            self._finish(reusable=False)
        elif self._phase != DONE:
            self._fail(UpstreamError("upstream closed the connection mid-response"))

    def data_received(self, data: bytes) -> None:
        self._active = True
        if self._phase == BODY:
            self._feed(data)
        elif self._phase == HEAD:
            self.received = True
            self._pending += data
            self._parse_head()
        else:  # bytes while idle or after a complete response: the connection is out of sync
            self._reusable = False
            self.abort()

    # -- request / head -------------------------------------------------------------------------------------
    def start(self, request: bytes, read_timeout_s: float | None) -> None:
        """Send `request` (a complete HTTP/1.1 message) and start reading its response."""
        assert self.transport is not None
        self.status, self.headers, self.received = 0, {}, False
        self.counted, self.first_byte_at = 0, None
        self._phase, self._pending, self._consumer, self._error = HEAD, b"", NONE, None
        self._decoded, self._decoded_size, self._paused = [], 0, False
        self._down, self._count, self._raw, self._reframe = None, None, False, False
        self._marker, self._find, self._on_error, self.stream_error = None, None, None, None
        if read_timeout_s is not None:
            self._timer = self._loop.call_later(read_timeout_s, self._check_idle, read_timeout_s)
        self.transport.write(request)

    async def wait_head(self) -> None:
        """Return once the status line and headers are in; raise the connection's error otherwise."""
        while self._phase == HEAD and self._error is None:
            await self._wait()
        if self._error is not None:
            raise self._error

    def _parse_head(self) -> None:
        while self._phase == HEAD:
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                if len(self._pending) > MAX_HEAD:
                    self._fail(UpstreamError("upstream response head is too large"))
                return
            head, self._pending = self._pending[:end].decode("latin-1"), self._pending[end + 4 :]
            status_line, *lines = head.split("\r\n")
            version, _, rest = status_line.partition(" ")
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                status, length = int(rest[:3]), int(headers.get("content-length", "0"))
            except ValueError:
                status = length = -1
            if status < 0 or length < 0:
                self._fail(UpstreamError(f"malformed upstream response head {head[:200]!r}"))
                return
            if 100 <= status < 200:  # interim response: the real one follows
                continue
            self.status, self.headers = status, headers
            self._reusable = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._framing = CHUNKED
            elif "content-length" in headers or status in (204, 304):
                self._framing, self._left = LENGTH, length
            else:
                self._framing, self._reusable = UNTIL_CLOSE, False
            self._phase = BODY
            self._wake()
            body, self._pending = self._pending, b""
            self._feed(body)

    # -- body -----------------------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Consume body bytes: keep them raw until a consumer is attached, then decode or forward them."""
        if self._consumer == NONE:
            self._pending += data
            return
        buf = self._pending + data if self._pending else data
        if self._framing == CHUNKED:
            self._feed_chunked(buf)
        elif self._framing == LENGTH:
            if len(buf) > self._left:  # more than announced: deliver what was announced, never reuse
                self._reusable = False
                buf = buf[: self._left]
            self._left -= len(buf)
            self._pending = b""
            if buf:
                self._deliver(buf, buf)
            if self._left == 0:
                self._finish(self._reusable)
        else:
            self._pending = b""
            if buf:
                self._deliver(buf, buf)

    def _feed_chunked(self, buf: bytes) -> None:
        pos, end, tail = 0, len(buf), 0
        payload: list[bytes] | None = None if self._raw else []
        done = False
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > MAX_HEAD:
                    self._fail(UpstreamError("upstream chunk header is too long"))
                    return
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                size = -1
            if size < 0:
                self._fail(UpstreamError("malformed chunk in upstream response"))
                return
            if size == 0:  # last chunk, then optional trailers and a blank line
                if buf.startswith(b"\r\n", eol + 2):
                    tail = eol + 4
                else:
                    tail = buf.find(b"\r\n\r\n", eol + 2)
                    if tail < 0:
                        break
                    tail += 4
                done = True
                break
            stop = eol + 2 + size
            if stop + 2 > end:
                break
            if buf[stop : stop + 2] != b"\r\n":
                self._fail(UpstreamError("malformed chunk in upstream response"))
                return
            if payload is not None:
                payload.append(buf[eol + 2 : stop])
            pos = stop + 2
        if pos:
            raw = buf if pos == end else buf[:pos]
            self._deliver(raw, raw if payload is None else b"".join(payload))
        if done:
            self._pending = b""
            self._finish(self._reusable and tail == end)
        else:
            self._pending = buf[pos:] if pos else buf

    def _deliver(self, raw: bytes, payload: bytes) -> None:
        """Hand decoded `payload` (whose wire form is `raw`) to the consumer."""
        if self._consumer == BUFFER:
            self._decoded.append(payload)
            self._decoded_size += len(payload)
            if self._decoded_size > BUFFER_LIMIT and not self._paused:
                self._pause()
            self._wake()
            return
        down = self._down
        assert down is not None
        if down.is_closing():
            self._fail(ClientGone("client went away"))
            self.abort()
            return
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        if self._marker is not None and self._marker in raw and self._cut(down, raw, payload):
            return
        if self._count is not None:
            self.counted += self._count(payload)
        if self._raw:
            down.write(raw)
        elif self._reframe:
            down.write(b"%x\r\n%b\r\n" % (len(payload), payload))
        else:
            down.write(payload)
        if down.get_write_buffer_size() > self._down_high and not self._paused:
            self._pause()
            self._wake()

    def _cut(self, down: asyncio.Transport, raw: bytes, payload: bytes) -> bool:
        """An error event in this piece? Then write what precedes it and the caller's event, and end the body."""
        assert self._find is not None
        decoded = _dechunk(raw) if self._raw else payload
        found = self._find(decoded)
        if found is None:
            return False
        offset, error = found
        out = decoded[:offset] + (self._on_error(error) if self._on_error is not None else b"")
        if self._count is not None:
            self.counted += self._count(decoded[:offset])
        if out:
            down.write(b"%x\r\n%b\r\n" % (len(out), out) if self._raw or self._reframe else out)
        self.stream_error = error
        self._finish(reusable=False)
        self.abort()
        return True

    def _finish(self, reusable: bool) -> None:
        self._phase, self._reusable = DONE, reusable
        self._cancel_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._phase, self._reusable = DONE, False
        self._cancel_timer()
        self._wake()

    # -- consumers ------------------------------------------------------------------------------------------
    def watch_errors(self, marker: bytes, find: Callable[[bytes], tuple[int, EngineError] | None]) -> None:
        """Let `forward()` stop at an error event inside the body (see the module docstring)."""
        self._marker, self._find = marker, find

    async def forward(
        self, request: web.BaseRequest, response: web.StreamResponse, count: Callable[[bytes], int] | None = None,
        on_error: Callable[[EngineError], bytes] | None = None,
    ) -> None:
        """Relay the body into `response` (prepared for `request`), writing to the client's transport directly;
        `count(payload)` is summed into `counted`; an error event found by `watch_errors` is replaced by
        `on_error(error)` and ends the relay (`stream_error`). Raises `ClientGone` or `UpstreamError`."""
        writer = await response.prepare(request)
        transport = request.transport
        if writer is None or transport is None or transport.is_closing():
            raise ClientGone("client went away")
        chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._down, self._count = cast(asyncio.Transport, transport), count
        self._down_high = transport.get_write_buffer_limits()[1]
        self._raw = chunked and self._framing == CHUNKED
        self._reframe = chunked and not self._raw
        self._on_error = on_error
        self._attach(FORWARD)
        while self._phase != DONE:
            await self._wait()
            if self._paused and self._phase != DONE:
                try:
                    await writer.drain()
                except ConnectionResetError as exc:
                    self.abort()
                    raise ClientGone("client went away") from exc
                self._resume()
        if self._error is not None:
            raise self._error

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The decoded body, in pieces as they arrive."""
        self._attach(BUFFER)
        while True:
            if self._decoded:
                data = b"".join(self._decoded) if len(self._decoded) > 1 else self._decoded[0]
                self._decoded, self._decoded_size = [], 0
                if self._paused:
                    self._resume()
                yield data
            elif self._phase == DONE:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    async def read(self) -> bytes:
        """The whole decoded body."""
        return b"".join([piece async for piece in self.iter_body()])

    def _attach(self, consumer: int) -> None:
        if self._consumer != NONE:
            raise RuntimeError("the response body is already being consumed")
        self._consumer = consumer
        if self._phase == BODY and self._pending:
            data, self._pending = self._pending, b""
            self._feed(data)
        elif self._phase == BODY and self._framing == LENGTH and self._left == 0:
            self._finish(self._reusable)
        if self._closed:
            self._on_eof()

    # -- flow control, waiting, closing ---------------------------------------------------------------------
    def _pause(self) -> None:
        self._paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_idle(self, timeout_s: float) -> None:
        """Timer: fail the response when nothing arrived for `timeout_s` (a paused reader is not idle)."""
        if self._active or self._paused:
            self._active = False
            self._timer = self._loop.call_later(timeout_s, self._check_idle, timeout_s)
            return
        self._timer = None
        self._fail(UpstreamError(f"upstream sent nothing for {timeout_s:g} s"))
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        """Drop the connection at once (it is never reused)."""
        self._reusable = False
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def release(self) -> None:
        """Done with this response: back to the pool if it was read completely, closed otherwise."""
        self._cancel_timer()
        self._down, self._count = None, None
        if self._phase == DONE and self._reusable and not self._closed:
            if self._paused:
                self._resume()
            self._pool.put(self)
        else:
            self.abort()


def _dechunk(raw: bytes) -> bytes:
    """The payload of whole chunks in their wire form (`_feed_chunked` delivers whole chunks only)."""
    out, pos = [], 0
    while pos < len(raw):
        eol = raw.find(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";", 1)[0], 16)
        out.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 4 + size
    return b"".join(out)


class UpstreamPool:
    """Keep-alive connections to one upstream `http://host:port` (no limit on connections in use)."""

    def __init__(
        self, base_url: str, *, connect_timeout_s: float = 10.0, read_timeout_s: float | None = None,
        max_idle: int = 1024,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"only http://host:port upstreams are supported, not {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self._host_header = f"Host: {url.netloc}\r\n".encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self._idle: dict[UpstreamConnection, None] = {}  # insertion-ordered: popitem() takes the newest
        self.opened = 0  # connections opened so far (tests check reuse)

    async def request(
        self, method: str, path: str, body: bytes = b"", *, content_type: str = "application/json",
    ) -> UpstreamConnection:
        """Send a request and return its connection once the response head is in. A reused connection that dies
        before any response byte (the upstream closed it while idle) is retried once on a fresh one."""
        head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._host_header
        if body or method not in ("GET", "HEAD"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode("latin-1")
        message = head + b"Accept: */*\r\n\r\n" + body
        for _attempt in range(2):
            conn, reused = await self._acquire()
            conn.start(message, self.read_timeout_s)
            try:
                await conn.wait_head()
            except UpstreamError:
                conn.release()
                if reused and not conn.received:
                    continue
                raise
            except BaseException:
                conn.release()
                raise
            return conn
        raise AssertionError("unreachable")

    async def _acquire(self) -> tuple[UpstreamConnection, bool]:
        while self._idle:
            conn, _ = self._idle.popitem()
            if not conn._closed:
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        self.opened += 1
        return conn, False

    def put(self, conn: UpstreamConnection) -> None:
        """Keep `conn` for the next request (closed instead when `max_idle` are kept already)."""
        if len(self._idle) >= self.max_idle:
            conn.abort()
        else:
            self._idle[conn] = None

    def forget(self, conn: UpstreamConnection) -> None:
        """`conn` closed: never hand it out again."""
        self._idle.pop(conn, None)

    def close(self) -> None:
        """Close every idle connection (connections in use close when released)."""
        while self._idle:
            conn, _ = self._idle.popitem()
            conn.abort()
