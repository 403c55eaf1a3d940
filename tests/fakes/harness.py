"""Starts the server app with a given engine in-process (pytest-aiohttp's client) and waits for its engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE, create_app
from inference_server.config import ServerConfig
from inference_server.engines.base import Engine

API_KEY = "test-key"
ADMIN_KEY = "admin-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]


def server_config(**overrides: Any) -> ServerConfig:
    """A config with keys set and a fast sync interval; `overrides` replace fields."""
    fields: dict[str, Any] = {"base_model_name": "tiny", "api_keys": (API_KEY,), "admin_key": ADMIN_KEY,
                              "port": 0, "sync_interval_s": 3600.0, "drain_timeout_s": 5.0}
    fields.update(overrides)
    return ServerConfig(**fields)


async def start_client(aiohttp_client: ClientFactory, config: ServerConfig, engine: Engine) -> TestClient:
    """A client to a started app whose engine is up and first sync is done."""
    app = create_app(config, engine)
    client = await aiohttp_client(app)
    state = app[STATE]
    for _ in range(500):
        if state.started and state.syncer.completed:  # the first sync's report is written too
            return client
        await asyncio.sleep(0.01)
    raise TimeoutError("server did not start")


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
