"""A chat API stand-in for the chat page tests: OpenAI-shaped models list, SSE chat, bearer key, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "page-key"
PIECES = ["Hel", "lo", " world"]
DEFAULTS = {"sampling_defaults": {"temperature": 0.2, "top_p": 1.0}}
MODELS = [  # beta's entry has no sampling defaults, as from an API that does not give them
    {"id": "tiny", "root": "tiny", "parent": None, "version": None, **DEFAULTS},
    {"id": "live", "root": "alpha", "parent": "tiny", "version": "alpha-1-v1", **DEFAULTS},
    {"id": "alpha", "root": "alpha", "parent": "tiny", "version": "alpha-1-v1", **DEFAULTS},
    {"id": "beta", "root": "beta", "parent": "tiny", "version": "beta-1-v2"},
]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "x", "param": None, "code": None}}, status=status)


@dataclass
class ChatStandIn:
    """A chat API look-alike: what it received, and switches for the failure it should answer with."""

    url: str = ""
    status: int = 200  # answer every request with this status (an OpenAI error body) when not 200
    fail_mid_stream: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "Incorrect or missing API key")
        if self.status == 503:
            return _error(503, "The engine is busy or restarting")
        if self.status != 200:
            return _error(self.status, "The model 'nope' does not exist")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        card = {"object": "model", "created": 0, "owned_by": "stand-in"}
        return self._refusal(request) or web.json_response({"object": "list", "data": [{**card, **m} for m in MODELS]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        self.requests.append(body)
        served = next((m["root"] for m in MODELS if m["id"] == body["model"]), body["model"])
        version = next((m["version"] for m in MODELS if m["id"] == served), None)
        headers = {"Content-Type": "text/event-stream", "X-Served-Model": served}
        if version:
            headers["X-Adapter-Version"] = version
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)

        async def event(obj: object) -> None:
            await response.write(f"data: {json.dumps(obj)}\n\n".encode())

        await event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i, piece in enumerate(PIECES):
            if self.fail_mid_stream and i == 1:
                await event({"error": {"message": "The engine failed to generate a response"}})
                return response
            await event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]})
        await event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        await event({"object": "chat.completion.chunk", "choices": [], "usage": {"completion_tokens": 3}})
        await response.write(b"data: [DONE]\n\n")
        return response


