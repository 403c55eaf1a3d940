"""The chat API over the echo engine: completions, streaming, routing by model, models list, readiness, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, sse_events, start_client


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path) -> TestClient:
    make_adapter(tmp_path, "alpha-1", "alpha")
    make_adapter(tmp_path, "beta-1", "beta")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="alpha")
    return await start_client(aiohttp_client, server_config(adapter_store=tmp_path), EchoEngine())


async def test_completion_base_model(client: TestClient) -> None:
    """A non-streaming request for the base name answers a chat.completion with usage and finish_reason."""
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny"), headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "[base] t0 t1 t2 t3"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert resp.headers["X-Served-Model"] == "tiny"
    assert "X-Adapter-Version" not in resp.headers


@pytest.mark.parametrize(("model", "folder"), [("live", "alpha-1"), ("alpha", "alpha-1"), ("beta", "beta-1")])
async def test_routing_by_model(client: TestClient, model: str, folder: str) -> None:
    """`model` picks the alias target or a named adapter, and the headers report the served version."""
    resp = await client.post("/v1/chat/completions", json=chat_body(model), headers=AUTH)
    body = await resp.json()
    assert body["choices"][0]["message"]["content"].startswith(f"[{folder}]")
    assert resp.headers["X-Adapter-Version"] == f"{folder}-v1"
    assert resp.headers["X-Served-Model"] == folder.split("-")[0]


async def test_streaming_chunks_and_usage(client: TestClient) -> None:
    """Streaming sends role, content and finish chunks, a usage chunk when asked, then [DONE]."""
    body = chat_body("live", stream=True, stream_options={"include_usage": True})
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "live" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "[alpha-1] t0 t1 t2 t3"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


async def test_streaming_without_usage(client: TestClient) -> None:
    """Without stream_options the stream carries no usage chunk."""
    resp = await client.post("/v1/chat/completions", json=chat_body("beta", stream=True), headers=AUTH)
    chunks = [json.loads(e) for e in sse_events(await resp.text())[:-1]]
    assert all("usage" not in c for c in chunks)


async def test_max_tokens_and_text_parts(client: TestClient) -> None:
    """List-of-text-parts content is accepted and max_tokens truncates with finish_reason=length."""
    body = {
        "model": "tiny",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": "hi"},
        ],
    }
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    data = await resp.json()
    assert data["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "[base] t0 t1"},
        "finish_reason": "length",
    }


async def test_models_list(client: TestClient) -> None:
    """/v1/models lists base, alias and adapters with the version each serves."""
    resp = await client.get("/v1/models", headers=AUTH)
    data = {m["id"]: m for m in (await resp.json())["data"]}
    assert set(data) == {"tiny", "live", "alpha", "beta"}
    assert data["live"]["root"] == "alpha" and data["live"]["version"] == "alpha-1-v1"
    assert data["beta"]["version"] == "beta-1-v1" and data["beta"]["parent"] == "tiny"
    assert data["tiny"]["version"] is None


async def test_health_and_ready(client: TestClient) -> None:
    """/health needs no key; /ready reports the served version and no sync error."""
    assert (await client.get("/health")).status == 200
    resp = await client.get("/ready", headers=AUTH)
    assert resp.status == 200
    ready = await resp.json()
    assert ready["ready"] is True and ready["served_version"] == "alpha-1-v1"
    assert ready["desired_version"] == "alpha-1-v1" and ready["last_sync_error"] is None


async def test_metrics_text(client: TestClient) -> None:
    """/metrics exposes request counts, tokens, latency, TTFT and adapter gauges."""
    await client.post("/v1/chat/completions", json=chat_body("alpha"), headers=AUTH)
    await client.post("/v1/chat/completions", json=chat_body("nope"), headers=AUTH)
    resp = await client.get("/metrics", headers=AUTH)
    text = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'inference_requests_total{model="alpha",status="200"} 1.0' in text
    assert 'inference_requests_total{model="",status="404"} 1.0' in text  # client strings never become labels
    assert 'inference_errors_total{type="model_not_found"} 1.0' in text
    assert 'inference_generated_tokens_total{model="alpha"} 5.0' in text
    assert "inference_request_latency_seconds_count 1.0" in text
    assert "inference_time_to_first_token_seconds_count 1.0" in text
    assert "inference_loaded_adapters 2.0" in text
    assert "inference_in_flight_requests 0.0" in text


async def test_admin_adapters(client: TestClient) -> None:
    """/admin/adapters needs the admin key and lists each adapter with its engine name and in-flight count."""
    assert (await client.get("/admin/adapters", headers=AUTH)).status == 401
    resp = await client.get("/admin/adapters", headers=ADMIN)
    data = await resp.json()
    assert data["active"] == "alpha"
    names = {a["name"]: a for a in data["adapters"]}
    assert names["alpha"]["active"] and not names["beta"]["active"]
    assert names["alpha"]["in_flight"] == 0
    assert sorted(data["engine_adapters"]) == sorted(a["engine_name"] for a in data["adapters"])
