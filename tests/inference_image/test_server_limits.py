"""Context length: prompt tokens plus max_tokens against the model's context, refused with a 400 before queueing."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from inference_server.engines.transformers_engine import TransformersEngine
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import AUTH, server_config, start_client
from tests.inference_image.test_server_errors import assert_error
from tinykit import KitPaths


def words(count: int, **extra: Any) -> dict[str, Any]:
    """A request for the base model whose prompt is `count` words (the echo engine's tokens)."""
    return {"model": "tiny", "messages": [{"role": "user", "content": " ".join(["w"] * count)}], **extra}


async def assert_context_exceeded(client: TestClient, body: dict[str, Any], *fragments: str) -> None:
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json={**body, "stream": stream}, headers=AUTH)
        assert resp.status == 400
        error = await resp.json()
        assert_error(error, param="messages", code="context_length_exceeded")
        assert all(f in error["error"]["message"] for f in fragments), error


@pytest.fixture
def engine() -> EchoEngine:
    engine = EchoEngine()
    engine.context_length = 20
    return engine


async def test_prompt_plus_max_tokens_over_the_context(aiohttp_client, engine: EchoEngine) -> None:
    """Prompt + max_tokens over the engine's context is a 400 that never reaches the engine; exactly full fits."""
    client = await start_client(aiohttp_client, server_config(), engine)
    await assert_context_exceeded(client, words(15, max_tokens=6), "maximum context length is 20 tokens",
                                  "21 tokens (15 in the messages, 6 in the completion)")
    await assert_context_exceeded(client, words(20))  # the prompt alone fills it
    assert engine.requests == []
    resp = await client.post("/v1/chat/completions", json=words(15, max_tokens=5), headers=AUTH)
    assert resp.status == 200 and engine.requests[-1].max_tokens == 5


async def test_default_max_tokens_is_cut_to_fit(aiohttp_client, engine: EchoEngine) -> None:
    """Without max_tokens the default budget shrinks to what the context leaves (not a 400)."""
    client = await start_client(aiohttp_client, server_config(), engine)
    resp = await client.post("/v1/chat/completions", json=words(17), headers=AUTH)
    assert resp.status == 200 and engine.requests[-1].max_tokens == 3


@pytest.mark.parametrize(("configured", "engine_limit", "applies"), [(8, None, 8), (8, 20, 8), (50, 20, 20)])
async def test_configured_limit_only_lowers(
    aiohttp_client, configured: int, engine_limit: int | None, applies: int
) -> None:
    """`max_context_tokens` applies where the engine reports no context length, or where it is lower."""
    engine = EchoEngine()
    engine.context_length = engine_limit
    client = await start_client(aiohttp_client, server_config(max_context_tokens=configured), engine)
    await assert_context_exceeded(client, words(applies - 3, max_tokens=4), f"maximum context length is {applies} tokens")
    assert engine.requests == []


async def test_long_prompt_on_the_tiny_model(aiohttp_client, tiny_kit: KitPaths) -> None:
    """A 6,000-token prompt against the tiny model (context 512 from its config) is a 400, not a 500."""
    engine = TransformersEngine(tiny_kit.base, tiny_kit.base_model_name, threads=1)
    client = await start_client(aiohttp_client, server_config(base_model_name=tiny_kit.base_model_name), engine)
    messages = [{"role": "user", "content": "two plus two " * 2000}]
    prompt = await engine.count_prompt_tokens(messages)
    assert prompt is not None and prompt >= 6000 and engine.context_length == 512
    body = {"model": tiny_kit.base_model_name, "messages": messages}
    await assert_context_exceeded(client, body, "maximum context length is 512 tokens", f"{prompt + 1} tokens")
    short = {"model": tiny_kit.base_model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert (await client.post("/v1/chat/completions", json=short, headers=AUTH)).status == 200
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert 'inference_errors_total{type="context_length_exceeded"} 2.0' in metrics
