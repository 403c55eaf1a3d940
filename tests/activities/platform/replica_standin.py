"""The tests' stand-in server (tests/activities/standin_server.py) plus what the revision runner's tests look at:
`GET /whoami` (the replica's name, pid and the Authorization header it received) and `GET /stream` (SSE: `n` events,
`gap` seconds apart, each naming the replica). Run as `python replica_standin.py --host H --port P`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from standin_server import Behavior, make_app  # noqa: E402


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"replica": os.environ.get("CONTAINER_APP_REPLICA_NAME"), "pid": os.getpid(),
                              "authorization": request.headers.get("Authorization")})


async def stream(request: web.Request) -> web.StreamResponse:
    n, gap = int(request.query.get("n", "3")), float(request.query.get("gap", "0.5"))
    answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await answer.prepare(request)
    for i in range(n):
        await answer.write(f"data: {i} {os.environ.get('CONTAINER_APP_REPLICA_NAME')}\n\n".encode())
        await asyncio.sleep(gap)
    await answer.write(b"data: [DONE]\n\n")
    return answer


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    app = make_app(Behavior(), argv)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/stream", stream)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
