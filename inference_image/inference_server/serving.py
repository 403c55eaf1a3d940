"""Chat completions: validation, context fit, admission, routing to an adapter, then the streaming or plain path.

Everything a client can get wrong is a 400 before anything is queued to the engine: the body (see protocol.py),
and a prompt whose tokens plus `max_tokens` exceed the context (the model's own, or `--max-context-tokens` if lower);
without `max_tokens` the default is cut to what fits. Engines that cannot count prompt tokens (SGLang) only get
the `max_tokens` check here and refuse long prompts themselves (`EngineRequestError`, also a 400).

Routing (registry.py): the alias may send a caller to the canary candidate; the caller's key is the body's `user`,
else the `X-Session-Id` header. Every answer carries `X-Served-Model` and, for an adapter, `X-Adapter-Version`; the
per-version counters of the replica report (metrics.py `VersionMetrics`) count each routed request, its time to
first token (to the whole answer when not streaming), and an error when it ends in a 5xx or fails mid-stream.

Engines that speak OpenAI SSE themselves (`open_sse(request, include_usage=...)`, SGLang) are relayed byte for
byte from the upstream socket to the client's (relay.py); other engines' `ChatDelta`s are encoded here. The hot path
does one JSON parse of the body, one registry lookup and a few counter updates; per upstream read on the
pass-through path only a chunk-framing scan, a byte count of content deltas and one socket write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from aiohttp import web

from .engines.base import ChatDelta, ChatRequest, EngineError, EngineNotReady, EngineRequestError, Usage
from .protocol import (
    ApiError,
    ParsedChat,
    adapter_unavailable,
    chunk_json,
    completion_json,
    context_exceeded,
    internal_error,
    invalid,
    parse_chat_request,
    parse_json,
    too_large,
    unavailable,
    unknown_model,
)
from .registry import AliasUnavailableError, Lease, UnknownModelError
from .relay import UpstreamConnection
from .state import ServerState

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Id"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class ChatService:
    """Serves `POST /v1/chat/completions` for one app."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._passthrough = getattr(state.engine, "open_sse", None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        started = time.perf_counter()
        try:
            parsed = parse_chat_request(parse_json(await self._read_body(request)),
                                        max_tokens_cap=state.config.max_tokens_cap, defaults=state.sampling_defaults)
            parsed = await self._fit_context(parsed)
            state.check_admission()
            lease = state.registry.acquire(parsed.model, parsed.user or request.headers.get(SESSION_HEADER))
        except UnknownModelError as exc:
            state.metrics.error("", 404, "model_not_found")  # labels never carry client-chosen strings
            raise unknown_model(exc.args[0]) from exc
        except AliasUnavailableError as exc:
            state.metrics.error("", 503, "adapter_unavailable")
            raise adapter_unavailable(*exc.args) from exc
        except ApiError as exc:
            state.metrics.error("", exc.status, exc.code or exc.type)
            raise
        state.begin()  # synchronous with acquire: drain sees every routed request
        state.versions.request(lease.route.label)
        try:
            return await self._serve(request, parsed, lease, started)
        except ApiError as exc:
            state.metrics.error(lease.route.served_model, exc.status, exc.code or exc.type)
            if exc.status >= 500:
                state.versions.error(lease.route.label)
            raise
        except Exception:
            state.versions.error(lease.route.label)
            raise
        finally:
            lease.release()
            state.done()

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._state.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise too_large(limit)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise too_large(limit) from exc

    async def _fit_context(self, parsed: ParsedChat) -> ParsedChat:
        """400 when prompt + max_tokens exceed the context; a defaulted max_tokens is cut to what is left."""
        engine, request = self._state.engine, parsed.request
        limits = [n for n in (self._state.config.max_context_tokens, engine.context_length) if n is not None]
        if not limits:
            return parsed
        limit = min(limits)
        prompt = await engine.count_prompt_tokens(request.messages)
        completion = request.max_tokens if parsed.max_tokens_given else 1
        if (prompt or 0) + completion > limit:
            raise context_exceeded(limit, prompt, completion)
        if prompt is None or parsed.max_tokens_given or request.max_tokens <= limit - prompt:
            return parsed
        return replace(parsed, request=replace(request, max_tokens=limit - prompt))

    async def _serve(self, request: web.Request, parsed: ParsedChat, lease: Lease, started: float) -> web.StreamResponse:
        route = lease.route
        engine_request = replace(parsed.request, adapter=route.ref.engine_name if route.ref else None)
        headers = {"X-Served-Model": route.served_model}
        if route.version is not None:
            headers["X-Adapter-Version"] = route.version
        try:
            if not engine_request.stream:
                return await self._complete(parsed.model, engine_request, headers, started)
            if self._passthrough is not None:
                upstream = await self._passthrough(engine_request, include_usage=parsed.include_usage)
                return await self._forward(request, route.served_model, upstream, headers, started)
            return await self._stream(request, parsed, engine_request, headers, started)
        except EngineRequestError as exc:
            raise invalid(str(exc), exc.param, exc.code) from exc
        except EngineNotReady as exc:
            log.warning("engine not ready: %s", exc)
            raise unavailable("The engine is busy or restarting") from exc
        except EngineError as exc:
            log.exception("engine failed")
            raise internal_error() from exc

    async def _complete(
        self, model: str, engine_request: ChatRequest, headers: dict[str, str], started: float
    ) -> web.Response:
        parts: list[str] = []
        final = ChatDelta()
        ttft: float | None = None
        async for delta in self._state.engine.chat(engine_request):
            if ttft is None:
                ttft = time.perf_counter() - started
            parts.append(delta.text)
            if delta.finish_reason is not None:
                final = delta
        body = completion_json(_completion_id(), int(time.time()), model, "".join(parts), final.finish_reason, final.usage)
        self._observe(headers["X-Served-Model"], 200, started, ttft, final.usage)
        self._state.versions.ttft(_label(headers), time.perf_counter() - started)
        return web.json_response(body, headers=headers)

    async def _forward(
        self,
        request: web.Request,
        served: str,
        upstream: UpstreamConnection,
        headers: dict[str, str],
        started: float,
    ) -> web.StreamResponse:
        """Relay an upstream SSE response (its status already 200) from socket to socket."""
        response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
        outcome = _Outcome()
        try:
            async with _mid_stream_failures(response, outcome):
                await upstream.forward(request, response, _content_deltas, _error_event)
        finally:
            upstream.release()
        if upstream.stream_error is not None:
            log.error("engine failed mid-stream: %s", upstream.stream_error)
            error = _client_error(upstream.stream_error)  # the request still counts as a 200 below
            self._state.metrics.errors.labels(error.code or error.type).inc()
            outcome.failed = error.status >= 500  # the engine refusing the request is the client's 4xx
        first = upstream.first_byte_at
        ttft = first - started if first is not None else None
        self._state.metrics.observe(served, 200, time.perf_counter() - started, ttft, upstream.counted)
        self._versions_done(_label(headers), ttft, outcome)
        return response

    async def _relay(
        self,
        request: web.Request,
        served: str,
        stream: AsyncIterator[bytes],
        headers: dict[str, str],
        started: float,
    ) -> web.StreamResponse:
        """Write an SSE byte stream (encoded deltas); errors before the first byte still get a status code."""
        first = await anext(stream)  # EngineError here becomes a proper 5xx response
        ttft = time.perf_counter() - started
        response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
        await response.prepare(request)
        tokens = _content_deltas(first)
        outcome = _Outcome()
        try:
            async with _mid_stream_failures(response, outcome):
                await response.write(first)
                async for chunk in stream:
                    tokens += _content_deltas(chunk)
                    await response.write(chunk)
        finally:
            await _aclose(stream)
        self._state.metrics.observe(served, 200, time.perf_counter() - started, ttft, tokens)
        self._versions_done(_label(headers), ttft, outcome)
        return response

    async def _stream(
        self,
        request: web.Request,
        parsed: ParsedChat,
        engine_request: ChatRequest,
        headers: dict[str, str],
        started: float,
    ) -> web.StreamResponse:
        """Encode the engine's deltas as OpenAI SSE chunks and relay them like a pass-through stream."""
        chunks = _sse_chunks(self._state.engine.chat(engine_request), parsed.model, parsed.include_usage)
        return await self._relay(request, headers["X-Served-Model"], chunks, headers, started)

    def _versions_done(self, label: str, ttft: float | None, outcome: _Outcome) -> None:
        """A stream that went out: its time to first token, and an error when it failed mid-stream."""
        if ttft is not None:
            self._state.versions.ttft(label, ttft)
        if outcome.failed:
            self._state.versions.error(label)

    def _observe(self, served: str, status: int, started: float, ttft: float | None, usage: Usage | None) -> None:
        tokens = usage.completion_tokens if usage else 0
        self._state.metrics.observe(served, status, time.perf_counter() - started, ttft, tokens)


class _Outcome:
    """How a stream that went out ended: `failed` when the engine failed mid-stream (not for a request it refused)."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


def _label(headers: dict[str, str]) -> str:
    """The per-version metrics key of an answer: its adapter version, else the served (base) model's name."""
    return headers.get("X-Adapter-Version") or headers["X-Served-Model"]


@contextlib.asynccontextmanager
async def _mid_stream_failures(response: web.StreamResponse, outcome: _Outcome) -> AsyncIterator[None]:
    """After the 200 went out: a client that left is logged, an engine failure ends the stream with an error event
    (and marks `outcome` failed)."""
    try:
        yield
    except ConnectionResetError:
        log.info("client went away mid-stream")
    except EngineError as exc:
        log.exception("engine failed mid-stream")
        outcome.failed = not isinstance(exc, EngineRequestError)  # a refused request is the client's 4xx
        await response.write(_error_event(exc))


def _client_error(exc: EngineError) -> ApiError:
    """What a client is told of an engine failure after its 200 went out: a request error keeps its message (the
    engine refused the request), anything else is the generic engine error."""
    if isinstance(exc, EngineRequestError):
        return invalid(str(exc), exc.param, exc.code)
    return internal_error()


def _error_event(exc: EngineError) -> bytes:
    """The OpenAI-shaped error event that ends a stream (`data: {"error": {...}}`; no [DONE] follows)."""
    return _sse(_client_error(exc).body())


def _content_deltas(chunk: bytes) -> int:
    """Non-empty content deltas in raw SSE bytes: the token count, without parsing (SGLang streams one token
    per chunk and serializes JSON without spaces)."""
    return chunk.count(b'"content":"') - chunk.count(b'"content":""')


async def _aclose(iterator: AsyncIterator[object]) -> None:
    """Close an engine's async generator now (releasing its upstream connection or generation slot)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _sse_chunks(deltas: AsyncIterator[ChatDelta], model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` SSE events for a stream of deltas: role, content pieces, finish, usage, [DONE]."""
    completion_id, created = _completion_id(), int(time.time())
    usage: Usage | None = None
    try:
        first = await anext(deltas)  # errors before the first byte still get a status code
        yield _sse(chunk_json(completion_id, created, model, {"role": "assistant", "content": ""}))
        delta: ChatDelta | None = first
        while delta is not None:
            if delta.text:
                yield _sse(chunk_json(completion_id, created, model, {"content": delta.text}))
            if delta.finish_reason is not None:
                usage = delta.usage
                yield _sse(chunk_json(completion_id, created, model, {}, delta.finish_reason))
            delta = await anext(deltas, None)
        if include_usage and usage is not None:
            yield _sse(chunk_json(completion_id, created, model, None, usage=usage))
        yield DONE
    finally:
        await _aclose(deltas)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
