"""A tiny aiohttp stand-in for the inference server: /health, /ready and a chat route with scripted behavior.

Used in-process (a thread) by the endpoint probe tests, and as a process by the local platform tests:
`python standin_server.py --host 127.0.0.1 --port P [any other flags, echoed back by /health]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Behavior:
    """What the stand-in answers; tests change it between probes."""

    ready_status: int = 200
    version: str | None = "v1"
    version_in_header: bool = False
    chat_status: int = 200
    chat_reply: str | None = "hello"
    chat_delay: float = 0.0
    api_key: str | None = None
    #: per requested `model`: its reply (models not listed get `chat_reply`)
    replies_by_model: dict[str, str] = field(default_factory=dict)
    #: (model, last user message) pairs answered with a 500
    failing_chats: set[tuple[str, str]] = field(default_factory=set)
    #: every chat request's JSON body, in arrival order
    chats: list[dict] = field(default_factory=list)


BEHAVIOR = web.AppKey("behavior", Behavior)


def make_app(behavior: Behavior, argv: list[str] | None = None) -> web.Application:
    """The stand-in app; `argv` is echoed by /health so the platform tests see the command line."""
    routes = web.RouteTableDef()

    def authorized(request: web.Request) -> bool:
        key = request.app[BEHAVIOR].api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def denied() -> web.Response:
        return web.json_response(
            {"error": {"message": "bad key", "type": "authentication_error"}}, status=401
        )

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        keys = os.environ.get("INFERENCE_API_KEYS", "")
        return web.json_response(
            {"status": "alive", "pid": os.getpid(), "argv": argv or [], "api_keys": keys}
        )

    @routes.get("/ready")
    async def ready(request: web.Request) -> web.Response:
        if not authorized(request):
            return denied()
        b = request.app[BEHAVIOR]
        if b.version_in_header:
            return web.json_response(
                {"ready": True}, status=b.ready_status, headers={"X-Adapter-Version": b.version or ""}
            )
        return web.json_response(
            {"ready": b.ready_status == 200, "served_version": b.version}, status=b.ready_status
        )

    @routes.post("/v1/chat/completions")
    async def chat(request: web.Request) -> web.Response:
        if not authorized(request):
            return denied()
        b = request.app[BEHAVIOR]
        body = await request.json()
        b.chats.append(body)
        await asyncio.sleep(b.chat_delay)
        last = (body.get("messages") or [{}])[-1].get("content")
        status = 500 if (body.get("model"), last) in b.failing_chats else b.chat_status
        if status != 200:
            return web.json_response(
                {"error": {"message": "engine exploded", "type": "server_error"}}, status=status
            )
        reply = b.replies_by_model.get(body.get("model"), b.chat_reply)
        message = (
            {"role": "assistant", "content": reply}
            if reply is not None
            else {"role": "assistant"}
        )
        return web.json_response(
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message}],
            }
        )

    app = web.Application()
    app[BEHAVIOR] = behavior
    app.add_routes(routes)
    return app


@contextmanager
def serve_in_thread(behavior: Behavior) -> Iterator[str]:
    """Run the stand-in on a free loopback port in a background thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(behavior), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    web.run_app(make_app(Behavior(), argv), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
