"""Reference for chat_overhead.py: the minimal aiohttp SSE pass-through (no auth, validation, metrics, routing).

    python bench/bare_proxy.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = request.app[UPSTREAM] + "/v1/chat/completions"
    async with request.app[SESSION].post(url, data=body, headers={"Content-Type": "application/json"}) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        return response


def main() -> None:
    import uvloop

    app = web.Application()
    app[UPSTREAM] = sys.argv[1].rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", lambda _: web.Response())  # only for the benchmark to see it is up
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
