"""A small async client for the chat API the page talks to: `GET /v1/models` (with each model's default
temperature) and streaming chat completions.

Every failure becomes a `ChatApiError` whose message is written for people ("chat API not reachable at URL",
"API key rejected (401)"); the page shows that text as it is. Each call opens its own `aiohttp` session, so a
client can be built before any event loop runs and used from whichever loop Gradio serves on (loopback
connection setup is negligible next to generation).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

MAX_DETAIL = 300


class ChatApiError(RuntimeError):
    """The chat API could not answer; `str(exc)` is a message fit to show on the page."""


class ApiUnreachableError(ChatApiError, ConnectionError):
    """Nothing answers at the API URL (refused, DNS, connection lost)."""


class ApiKeyRejectedError(ChatApiError, PermissionError):
    """The API answered 401: the key is wrong or missing."""


class ApiNotReadyError(ChatApiError):
    """The API answered 503: the engine is starting, busy or draining."""


class ApiTimeoutError(ChatApiError, TimeoutError):
    """The API did not answer in time."""


@dataclass(frozen=True)
class ModelCard:
    """One entry of `/v1/models`: `root` is what an alias routes to; `version` is None for the base model;
    `temperature` is the model's default (its `sampling_defaults`), None when the API does not say."""

    id: str
    root: str
    parent: str | None
    version: str | None
    temperature: float | None = None

    @property
    def is_base(self) -> bool:
        return self.parent is None


@dataclass(frozen=True)
class ChatTurn:
    """One request: the whole conversation (role/content dicts) and the sampling settings (`temperature` None:
    left out, so the server applies the model's default)."""

    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int = 256


class ChatReply:
    """An open streaming reply: which adapter serves it (from the response headers) and its text pieces."""

    def __init__(self, response: aiohttp.ClientResponse, api_url: str) -> None:
        self._response = response
        self._api_url = api_url
        self.served_model: str | None = response.headers.get("X-Served-Model")
        self.adapter_version: str | None = response.headers.get("X-Adapter-Version")

    async def pieces(self) -> AsyncIterator[str]:
        """The streamed text, piece by piece, until `data: [DONE]` (an error event raises `ChatApiError`)."""
        with _translated(self._api_url):
            async for raw in self._response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments and other SSE fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                text = _chunk_text(data)
                if text:
                    yield text


class ChatClient:
    """Talks to one chat API with one bearer key."""

    def __init__(self, api_url: str, api_key: str | None, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 120.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)

    def __repr__(self) -> str:  # the key stays out of logs
        return f"ChatClient({self.api_url!r})"

    async def list_models(self) -> list[ModelCard]:
        """The served models: the base model, the alias and each adapter, in the API's order."""
        async with self._session() as session, session.get(self.api_url + "/v1/models") as response:
            await _raise_for_status(response)
            try:
                data = await response.json()
                return [_card(item) for item in data["data"]]
            except (aiohttp.ContentTypeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ChatApiError(f"chat API at {self.api_url} sent an unreadable model list") from exc

    @asynccontextmanager
    async def chat(self, turn: ChatTurn) -> AsyncIterator[ChatReply]:
        """Open a streaming completion; errors before the first byte raise here, later ones from `pieces()`."""
        body: dict[str, Any] = {"model": turn.model, "messages": turn.messages, "max_tokens": turn.max_tokens,
                                "stream": True}
        if turn.temperature is not None:
            body["temperature"] = turn.temperature
        async with self._session() as session:
            with _translated(self.api_url):
                response = await session.post(self.api_url + "/v1/chat/completions", json=body)
            async with response:
                await _raise_for_status(response)
                yield ChatReply(response, self.api_url)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        with _translated(self.api_url):
            async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session:
                yield session


@contextmanager
def _translated(api_url: str) -> Iterator[None]:
    """Turn transport failures into `ChatApiError`s with a human message."""
    try:
        yield
    except ChatApiError:
        raise  # already translated by an inner block
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
        raise ApiUnreachableError(f"chat API not reachable at {api_url}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise ApiUnreachableError(f"lost the connection to the chat API at {api_url}") from exc
    except TimeoutError as exc:
        raise ApiTimeoutError(f"chat API at {api_url} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise ChatApiError(f"chat API at {api_url} failed: {type(exc).__name__}") from exc


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    detail = _error_message(await response.read())
    if response.status == 401:
        raise ApiKeyRejectedError("API key rejected (401)")
    if response.status == 503:
        raise ApiNotReadyError(f"chat API not ready (503): {detail or 'starting up'}; try again in a moment")
    raise ChatApiError(f"chat API error ({response.status}): {detail or response.reason or 'no details'}")


def _error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI error body, else a trimmed piece of the body."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()
    return str(message)[:MAX_DETAIL]


def _chunk_text(data: bytes) -> str:
    """The delta text of one `chat.completion.chunk` (usage-only chunks have none)."""
    try:
        chunk: Any = json.loads(data)
    except ValueError as exc:
        raise ChatApiError("chat API sent a malformed stream event") from exc
    if not isinstance(chunk, dict):
        raise ChatApiError("chat API sent a malformed stream event")
    if "error" in chunk:
        raise ChatApiError(f"chat API failed mid-reply: {_error_message(data)}")
    choices = chunk.get("choices") or []
    delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _card(item: dict[str, Any]) -> ModelCard:
    return ModelCard(id=str(item["id"]), root=str(item.get("root") or item["id"]), parent=item.get("parent"),
                     version=item.get("version"), temperature=_default_temperature(item.get("sampling_defaults")))


def _default_temperature(defaults: Any) -> float | None:
    """`sampling_defaults.temperature` when it is a number (the server's extension of OpenAI's model object)."""
    value = defaults.get("temperature") if isinstance(defaults, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
