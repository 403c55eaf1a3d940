"""Every rejected request: status code and OpenAI error body (400, 401, 404, 405, 413, 503)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, start_client

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def engine() -> EchoEngine:
    return EchoEngine()


@pytest.fixture
async def client(aiohttp_client, engine: EchoEngine) -> TestClient:
    return await start_client(aiohttp_client, server_config(max_body_bytes=4096, max_tokens_cap=100), engine)


def assert_error(body: dict[str, Any], param: str | None = None, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code


BAD_BODIES = [
    ({"messages": MSG}, "model"),
    ({"model": 3, "messages": MSG}, "model"),
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": "hi"}, "messages"),
    ({"model": "tiny", "messages": ["hi"]}, "messages[0]"),
    ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content",
    ),
    ({"model": "tiny", "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "messages": MSG, "max_tokens": 101}, "max_tokens"),
    ({"model": "tiny", "messages": MSG, "max_tokens": 2.5}, "max_tokens"),
    ({"model": "tiny", "messages": MSG, "max_completion_tokens": -1}, "max_completion_tokens"),
    ({"model": "tiny", "messages": MSG, "temperature": -0.1}, "temperature"),
    ({"model": "tiny", "messages": MSG, "temperature": 2.01}, "temperature"),
    ({"model": "tiny", "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "messages": MSG, "top_p": 0}, "top_p"),
    ({"model": "tiny", "messages": MSG, "top_p": 1.5}, "top_p"),
    ({"model": "tiny", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "tiny", "messages": MSG, "stop": [1]}, "stop"),
    ({"model": "tiny", "messages": MSG, "seed": "7"}, "seed"),
    ({"model": "tiny", "messages": MSG, "seed": 1.5}, "seed"),
    ({"model": "tiny", "messages": MSG, "seed": 2**70}, "seed"),
    ({"model": "tiny", "messages": MSG, "seed": -1}, "seed"),
    ({"model": "tiny", "messages": MSG, "temperature": 10**400}, "temperature"),
    ({"model": "tiny", "messages": MSG, "top_p": 10**400}, "top_p"),
    ({"model": "tiny", "messages": MSG, "stream": "yes"}, "stream"),
    ({"model": "tiny", "messages": MSG, "n": 2}, "n"),
    ({"model": "tiny", "messages": MSG, "stream": True, "stream_options": []}, "stream_options"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES, ids=[p for _, p in BAD_BODIES])
async def test_bad_body_is_400(
    client: TestClient, engine: EchoEngine, body: dict[str, Any], param: str
) -> None:
    """Each malformed or out-of-range field gets a 400 naming the field, and never reaches the engine."""
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status == 400
    body_json = await resp.json()
    assert_error(body_json, param=param)
    assert body_json["error"]["type"] == "invalid_request_error"
    assert engine.requests == []


@pytest.fixture
async def roomy(aiohttp_client, engine: EchoEngine) -> TestClient:
    """A client whose server takes bodies of up to 1 MiB."""
    return await start_client(aiohttp_client, server_config(max_body_bytes=1 << 20), engine)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
async def test_invalid_json_is_400(client: TestClient, raw: bytes) -> None:
    """A body that is not a JSON object is a 400."""
    resp = await client.post(
        "/v1/chat/completions", data=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert_error(await resp.json())


@pytest.mark.parametrize("raw", [b'{"model": "tiny", "seed": 1' + b"0" * 5000 + b"}",
                                 b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": NaN}'],
                         ids=["5000-digit-int", "NaN"])
async def test_unparsable_numbers_are_400(roomy: TestClient, engine: EchoEngine, raw: bytes) -> None:
    """An integer over Python's digit limit, or NaN/Infinity (not JSON), is a 400, not a 500."""
    resp = await roomy.post("/v1/chat/completions", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json())
    assert engine.requests == []


async def test_deep_json_is_400(roomy: TestClient, engine: EchoEngine) -> None:
    """JSON nested deeper than 64 levels is a 400 before it is parsed (100,000 levels would overflow the parser);
    64 levels pass, and brackets inside strings do not count."""

    def with_depth(levels: int) -> bytes:  # the body object is one level, `metadata` the rest
        return (json.dumps(chat_body("tiny"))[:-1] + ', "metadata": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}").encode()

    for raw in (b"[" * 100_000 + b"]" * 100_000, with_depth(65)):
        resp = await roomy.post("/v1/chat/completions", data=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400
        assert "deeper than 64" in (await resp.json())["error"]["message"]
    body = chat_body("tiny")
    body["messages"][0]["content"] = 'a "quoted\\" [{' * 100  # escaped quotes and backslashes inside
    for ok in (with_depth(64), json.dumps(body).encode()):
        resp = await roomy.post("/v1/chat/completions", data=ok, headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 200
    assert len(engine.requests) == 2


async def test_unknown_model_is_404(client: TestClient, engine: EchoEngine) -> None:
    """A model that is not base, alias or adapter is OpenAI's 404 with code model_not_found."""
    resp = await client.post("/v1/chat/completions", json=chat_body("gpt-9"), headers=AUTH)
    assert resp.status == 404
    body = await resp.json()
    assert_error(body, code="model_not_found")
    assert "gpt-9" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    assert engine.requests == []


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/v1/completions", 404), ("GET", "/nope", 404),
                                                        ("GET", "/v1/chat/completions", 405)])
async def test_unrouted_requests_get_openai_errors(client: TestClient, method: str, path: str, status: int) -> None:
    """A path the server does not serve (404) or a method it does not take (405, with Allow) answers OpenAI's JSON
    error shape, not aiohttp's text page; without a key it stays a 401."""
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == status
    body = await resp.json()
    assert_error(body)
    assert body["error"]["message"].endswith(f"({method} {path})")
    assert (resp.headers.get("Allow") == "POST") is (status == 405)
    assert (await client.request(method, path)).status == 401


async def test_alias_without_manifest_serves_base(client: TestClient) -> None:
    """With no manifest the alias routes to the base model."""
    resp = await client.post("/v1/chat/completions", json=chat_body("live"), headers=AUTH)
    assert resp.status == 200 and resp.headers["X-Served-Model"] == "tiny"


async def test_body_over_limit_is_413(client: TestClient) -> None:
    """A body over max_body_bytes is a 413 in OpenAI's shape."""
    body = chat_body("tiny")
    body["messages"][0]["content"] = "x" * 5000
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status == 413
    assert_error(await resp.json(), code="request_too_large")


@pytest.mark.parametrize("header", [None, "Bearer wrong", "test-key", "Basic dGVzdC1rZXk=", "Bearer "])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics")],
)
async def test_missing_or_wrong_key_is_401(
    client: TestClient, header: str | None, method: str, path: str
) -> None:
    """Every route but /health and /ready needs the bearer API key."""
    headers = {"Authorization": header} if header else {}
    resp = await client.request(method, path, json=chat_body("tiny"), headers=headers)
    assert resp.status == 401
    assert_error(await resp.json(), code="invalid_api_key")


@pytest.mark.parametrize("header", [None, "Bearer wrong"])
async def test_ready_without_key_gives_status_only(client: TestClient, header: str | None) -> None:
    """Platform probes carry no secret: /ready answers its status code with `ready` alone, no details."""
    headers = {"Authorization": header} if header else {}
    resp = await client.get("/ready", headers=headers)
    assert resp.status == 200 and await resp.json() == {"ready": True}
    detailed = await (await client.get("/ready", headers=AUTH)).json()
    assert detailed["ready"] is True and "served_version" in detailed


async def test_admin_key_is_not_an_api_key(client: TestClient) -> None:
    """The admin key opens admin routes only; the API key does not open them."""
    assert (await client.post("/admin/sync", headers=AUTH)).status == 401
    assert (await client.post("/admin/sync", headers=ADMIN)).status == 200
    assert (await client.get("/v1/models", headers=ADMIN)).status == 401


async def test_admin_routes_closed_without_an_admin_key(aiohttp_client) -> None:
    """With chat keys but no admin key configured, no key opens the admin routes (a chat key never does)."""
    client = await start_client(aiohttp_client, server_config(admin_key=None), EchoEngine())
    assert (await client.post("/admin/sync", headers=AUTH)).status == 401
    assert (await client.get("/admin/adapters", headers=AUTH)).status == 401
    assert (await client.get("/v1/models", headers=AUTH)).status == 200


async def test_queue_full_is_503_with_retry_after(client: TestClient, engine: EchoEngine) -> None:
    """An overloaded engine (EngineNotReady) makes a 503 with Retry-After."""
    engine.busy = True
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json=chat_body("tiny", stream=stream), headers=AUTH)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert_error(await resp.json(), code="unavailable")


async def test_engine_not_ready_is_503(client: TestClient, engine: EchoEngine) -> None:
    """While the engine is down chat answers 503 and /ready answers 503 with the engine detail."""
    engine.ready = False
    resp = await client.post("/v1/chat/completions", json=chat_body("tiny"), headers=AUTH)
    assert resp.status == 503 and "Retry-After" in resp.headers
    ready = await client.get("/ready", headers=AUTH)
    assert ready.status == 503
    assert (await ready.json())["engine"] == {"name": "echo", "ready": False, "detail": "stopped"}
