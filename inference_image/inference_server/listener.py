"""The listening socket, with a header timeout and an idle timeout per connection.

aiohttp 3.14 (`web_protocol.RequestHandler`) has one connection timer, `keepalive_timeout`: armed when a
connection opens and again after each response, it closes the connection if no whole request head has come by
then; the bytes of a partial head do not extend it. It is the idle timeout here (`idle_timeout_s`). It bounds a
head that trickles in only at that limit, so `_HeadTimer` adds a shorter one (`header_timeout_s`): from a
connection's opening, and from the first byte after each request, the next request must reach the app in time or
the connection is closed. A request counts from when the app starts handling it until its handler returns (a
middleware marks both), so a long stream is never cut. Not covered: a pipelined head stalled behind a running
request is closed only at the idle timeout; a slow request body is not timed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .config import ServerConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _HeadTimer(asyncio.Protocol):
    """Wraps one connection's aiohttp protocol; closes the connection when its next request head is overdue."""

    def __init__(self, inner: asyncio.Protocol, timeouts: HeaderTimeouts) -> None:
        self._inner = inner
        self._timeouts = timeouts
        self._transport: asyncio.BaseTransport | None = None  # uvloop's are no `asyncio.Transport` subclasses
        self._timer: asyncio.TimerHandle | None = None
        self.requests = 0  # requests of this connection inside the app

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timeouts.connections[self._inner] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.requests and self._timer is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self._timeouts.connections.pop(self._inner, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._timeouts.header_timeout_s, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self.requests and self._transport is not None:
            log.info("closing a connection: no whole request head within %.1f s", self._timeouts.header_timeout_s)
            self._transport.close()


class HeaderTimeouts:
    """The header timeout of every connection: `wrap` puts a timer on each, `middleware` pauses it per request."""

    def __init__(self, header_timeout_s: float) -> None:
        self.header_timeout_s = header_timeout_s
        self.connections: dict[asyncio.Protocol, _HeadTimer] = {}  # aiohttp's protocol → its timer

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _HeadTimer(factory(), self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        timer = self.connections.get(request.protocol)
        if timer is None:  # a connection this listener did not accept (e.g. a test client's server)
            return await handler(request)
        timer.requests += 1
        timer.disarm()
        try:
            return await handler(request)
        finally:
            timer.requests -= 1


@dataclass
class Listener:
    """A listening app: `port` is the bound one; `close()` stops listening, then drains and cleans up."""

    runner: web.AppRunner
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def listen(app: web.Application, config: ServerConfig) -> Listener:
    """Serve `app` on `config.host:config.port` with the header and idle timeouts (before `app` is frozen)."""
    timeouts = HeaderTimeouts(config.header_timeout_s)
    app.middlewares.insert(0, timeouts.middleware)
    runner = web.AppRunner(app, shutdown_timeout=config.drain_timeout_s + 5, access_log=None,
                           keepalive_timeout=config.idle_timeout_s)
    await runner.setup()
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(
        timeouts.wrap(runner.server), config.host, config.port, backlog=128
    )
    return Listener(runner, server)
