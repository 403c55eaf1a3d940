"""A stand-in for the orchestrator's status API (and a chat endpoint) on loopback, for adapterctl tests without a
stack: canned JSON per route, records that advance one stage per poll, and every request kept for assertions."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeApi:
    """`routes`: path (with query), or "METHOD path" for one method only (it wins) → (status, JSON body).
    `deployments`: id → the records successive GETs of `/api/deployments/<id>` answer (the last one repeats);
    `any_deployment` does the same for every other id, with the id filled in. `requests`: (method, path, headers)
    of each request, in order; `bodies`: (method, path, the JSON body or None) of each request with a body."""

    url: str = ""
    routes: dict[str, tuple[int, Any]] = field(default_factory=dict)
    deployments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    any_deployment: list[dict[str, Any]] = field(default_factory=list)
    chat_reply: list[str] = field(default_factory=list)
    chat_error: tuple[int, Any] | None = None  # (status, JSON body) the chat route answers instead of a stream
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)
    _polls: dict[str, int] = field(default_factory=dict)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        prefix = "/api/deployments/"
        if method == "GET" and path.startswith(prefix):
            record_id = path[len(prefix):]
            steps = self.deployments.get(record_id) or [{**r, "id": record_id} for r in self.any_deployment]
            if steps:
                n = self._polls[record_id] = self._polls.get(record_id, -1) + 1
                return 200, steps[min(n, len(steps) - 1)]
        fallback = self.routes.get(path, (404, {"error": {"message": f"no route {method} {path}"}}))
        return self.routes.get(f"{method} {path}", fallback)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                raw = self.rfile.read(length)
                try:
                    api.bodies.append((method, self.path, json.loads(raw)))
                except ValueError:
                    api.bodies.append((method, self.path, None))
            api.requests.append((method, self.path, dict(self.headers)))
            chat = self.path == "/v1/chat/completions"
            if chat and api.chat_error is None:
                return self._stream_chat()
            status, body = api.chat_error if chat and api.chat_error else api.answer(method, self.path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream_chat(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in api.chat_reply:
                chunk = {"choices": [{"delta": {"content": piece}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._reply("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._reply("DELETE")

    return Handler


@contextmanager
def serve(api: FakeApi | None = None) -> Iterator[FakeApi]:
    """Run `api` on a free loopback port until the block ends; `api.url` is its base URL."""
    api = api or FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


def record(record_id: str, stage: str, stages: list[str], **extra: Any) -> dict[str, Any]:
    """A deployment record at `stage` with a history of `stages`, one second apart from 14:14:11 UTC."""
    history = [{"stage": s, "at": f"2026-11-30T14:14:{11 + i:02d}.250000+00:00"} for i, s in enumerate(stages)]
    return {"id": record_id, "app": record_id.split(".")[0], "adapter": "beta", "source": "upload",
            "stage": stage, "history": history, "accepted_at": history[0]["at"] if history else None,
            "reason": None, **extra}
