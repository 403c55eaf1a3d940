"""The error table through the official `openai` client: each failure raises the exception class a client of
OpenAI's API expects for it, carrying our OpenAI-shaped error body (`message`, `type`, `param`, `code`).

| case                       | status | code                    | openai raises            |
|----------------------------|--------|-------------------------|--------------------------|
| invalid body field         | 400    | (param names the field) | BadRequestError          |
| prompt over the context    | 400    | context_length_exceeded | BadRequestError          |
| missing or wrong key       | 401    | invalid_api_key         | AuthenticationError      |
| unknown model              | 404    | model_not_found         | NotFoundError            |
| unknown path               | 404    | -                       | NotFoundError            |
| wrong method               | 405    | -                       | APIStatusError           |
| body over the limit        | 413    | request_too_large       | APIStatusError           |
| engine failed              | 500    | engine_error            | InternalServerError      |
| engine busy or starting    | 503    | unavailable             | InternalServerError      |
| engine failed mid-stream   | (200)  | engine_error            | APIError (stream event)  |
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from inference_server.engines.base import ChatDelta, ChatRequest, EngineError
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import API_KEY, server_config, start_client

MSG = [{"role": "user", "content": "hi"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


class FailingEngine(EchoEngine):
    """Echoes until `fail_after` pieces were sent (None: never), then fails as an engine does."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_after: int | None = None

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        sent = 0
        async for delta in super().chat(request):
            if sent == self.fail_after:
                raise EngineError("the model broke")
            sent += 1
            yield delta


@dataclass
class Api:
    """The server under test, its engine, and an official client (no retries) with or without the right key."""

    engine: FailingEngine
    url: str

    def client(self, key: str = API_KEY) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=10)


@pytest.fixture
async def api(aiohttp_client) -> Api:
    engine = FailingEngine()
    client: TestClient = await start_client(aiohttp_client, server_config(max_body_bytes=4096), engine)
    return Api(engine, str(client.make_url("/v1")))


def chat(**overrides: Any) -> Callable[[Api], Awaitable[object]]:
    """A chat completion with `overrides` on a valid request."""
    return lambda api: api.client().chat.completions.create(**{"model": "tiny", "messages": MSG, **overrides})


async def over_context(api: Api) -> object:
    api.engine.context_length = 8
    return await chat(messages=[{"role": "user", "content": "word " * 20}])(api)


async def busy(api: Api) -> object:
    api.engine.busy = True
    return await chat()(api)


async def failing(api: Api) -> object:
    api.engine.fail_after = 0
    return await chat()(api)


CASES: list[tuple[str, Callable[[Api], Awaitable[object]], type[openai.APIStatusError], int, str | None]] = [
    ("invalid-field", chat(temperature=5), openai.BadRequestError, 400, None),
    ("over-context", over_context, openai.BadRequestError, 400, "context_length_exceeded"),
    ("wrong-key", lambda api: api.client("wrong").models.list(), openai.AuthenticationError, 401, "invalid_api_key"),
    ("unknown-model", chat(model="gpt-9"), openai.NotFoundError, 404, "model_not_found"),
    ("unknown-path", lambda api: api.client().completions.create(model="tiny", prompt="hi"), openai.NotFoundError,
     404, None),
    ("wrong-method", lambda api: api.client().get("/chat/completions", cast_to=object), openai.APIStatusError, 405,
     None),
    ("too-large", chat(messages=[{"role": "user", "content": "x" * 5000}]), openai.APIStatusError, 413,
     "request_too_large"),
    ("engine-failed", failing, openai.InternalServerError, 500, "engine_error"),
    ("engine-busy", busy, openai.InternalServerError, 503, "unavailable"),
]


@pytest.mark.parametrize(("call", "raises", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_error_raises_the_expected_openai_exception(
    api: Api, call: Callable[[Api], Awaitable[object]], raises: type[openai.APIStatusError], status: int,
    code: str | None,
) -> None:
    """The client raises exactly `raises` (not merely a parent class) with our status, body and code."""
    with pytest.raises(openai.APIStatusError) as caught:
        await call(api)
    error = caught.value
    assert type(error) is raises, repr(error)
    assert error.status_code == status
    assert isinstance(error.body, dict) and set(error.body) == ERROR_FIELDS, error.body
    assert error.body["message"] and error.message == f"Error code: {status} - {error.body['message']}"
    assert error.code == code
    expected_type = "server_error" if status >= 500 else (
        "authentication_error" if status == 401 else "invalid_request_error")
    assert error.type == expected_type


async def test_invalid_field_names_its_param(api: Api) -> None:
    """A 400 for one field says which field in `param`, as OpenAI does."""
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(top_p=0)(api)
    assert caught.value.param == "top_p"


async def test_busy_engine_asks_to_retry_after(api: Api) -> None:
    """A 503 carries Retry-After (the client retries 5xx answers after that long when retries are on)."""
    api.engine.busy = True
    with pytest.raises(openai.InternalServerError) as caught:
        await chat()(api)
    assert caught.value.response.headers["Retry-After"] == "2"


async def test_failure_mid_stream_raises_api_error(api: Api) -> None:
    """An engine failure after the 200 went out ends the stream with an error event: the client raises APIError
    with our message and code, after the pieces that came before."""
    api.engine.fail_after = 2
    stream = await api.client().chat.completions.create(model="tiny", messages=MSG, stream=True)
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert "".join(pieces) == "[base] t0"
    assert caught.value.code == "engine_error" and caught.value.type == "server_error"
