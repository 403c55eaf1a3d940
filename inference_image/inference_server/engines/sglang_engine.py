"""GPU engine: a supervised SGLang server on loopback, spoken to over its HTTP API.

`start()` launches `python -m sglang.launch_server` (the command prefix is configurable, so tests substitute a
fake) with LoRA enabled and the adapters loaded so far as `--lora-paths NAME=PATH`, then waits for `/health`. A
supervisor task relaunches the child if it dies, reporting not-ready meanwhile. With `upstream_url` the engine
attaches to an already running server instead (no child; used by the benchmark).

Chat goes to SGLang's `/v1/chat/completions` with `"model": "<base>:<adapter>"` (the base name alone for the base
model). `open_sse()` returns the upstream response for the server to relay socket to socket; `stream_sse()` yields
its SSE bytes unparsed and `chat()` parses them into `ChatDelta`s. Adapters load and unload at run time with
`POST /load_lora_adapter {"lora_name", "lora_path"}` and `POST /unload_lora_adapter {"lora_name"}`, both answering
`{"success", "error_message", "loaded_adapters"}`. Every call goes through one keep-alive `UpstreamPool` (relay.py);
it sends no cookies, so nothing an upstream sets leaks between clients.

Prompt length: this engine holds no tokenizer, so the server cannot count prompt tokens before queueing (it only
refuses a `max_tokens` over `--max-context-tokens`). SGLang counts them itself and answers 400 "... context
length ..."; that answer becomes `EngineRequestError` (a 400 `context_length_exceeded` for the client), not a 500.

Launch contract (checked against SGLang's own argument validation by tests/contracts/test_sglang_args.py): every
launch, first or relaunch, passes `--max-lora-rank` and `--lora-target-modules` from the options, never leaving
SGLang to infer them from the adapters loaded at that moment. A launch that fails (the child exits, or `/health`
stays non-200 past `startup_timeout_s`; SGLang answers 503 while it loads) is retried with exponential backoff;
`health().detail` says which attempt failed and why (the last lines SGLang printed), so `/ready` shows it. After
`start_attempts` failures in a row, at start or when relaunching after a crash, the engine gives up: `failed` is
set and the server's `/health` answers 503, so the platform's liveness probe (ACA: `/health`, 3 failures 30 s
apart) restarts the container.

Errors after streaming began: SGLang reports them inside its 200 stream as `data: {"error": {"object": "error",
"message", "type", "code"}}` (older releases: the error object at the top level), then `[DONE]`. `chat()` raises
them (`EngineRequestError` for a 4xx code, else `EngineError`); on the pass-through path `open_sse()` arms the
connection with `find_sse_error`, and the server replaces the event with its own OpenAI error event and ends the
stream there.

Text: SGLang streams text it decoded itself (its DetokenizerManager, checked in sglang 0.5.23), and this engine
passes it on unchanged. SGLang holds a piece back while its decoded text ends in U+FFFD (an incomplete UTF-8
sequence) and sends it once the character is whole, so a split character never streams half. Unlike the
transformers engine (engines/utf8.py) it does not keep sampling to valid UTF-8: a lead byte followed by anything
but its continuation, or a character cut by `max_tokens`, reaches the client as U+FFFD, as from SGLang directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import faults
from ..relay import UpstreamConnection, UpstreamError, UpstreamPool
from .base import (
    AdapterLoadError,
    ChatDelta,
    ChatRequest,
    Engine,
    EngineError,
    EngineHealth,
    EngineNotReady,
    EngineRequestError,
    Usage,
)

if TYPE_CHECKING:
    from ..config import SGLangSettings

log = logging.getLogger(__name__)

BUSY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class SGLangOptions:
    """Launch and connection settings; `port=0` picks a free loopback port at each launch."""

    command: tuple[str, ...] = ()  # empty: (sys.executable, "-m", "sglang.launch_server")
    upstream_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    max_loras_per_batch: int = 8
    max_lora_rank: int = 64
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj",
                                            "up_proj", "down_proj")
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 900.0
    health_interval_s: float = 0.25
    restart_backoff_s: float = 1.0  # before the 2nd attempt; doubled per failure up to max_backoff_s
    max_backoff_s: float = 60.0
    start_attempts: int = 5  # failed launches in a row before giving up
    stop_timeout_s: float = 15.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float | None = 600.0  # longest silence of SGLang within one response
    health_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: SGLangSettings) -> SGLangOptions:
        return cls(
            command=settings.command,
            upstream_url=settings.upstream_url,
            max_loras_per_batch=settings.max_loras_per_batch,
            max_lora_rank=settings.max_lora_rank,
            lora_target_modules=settings.lora_target_modules,
            extra_args=settings.extra_args,
            startup_timeout_s=settings.startup_timeout_s,
            start_attempts=settings.start_attempts,
        )

    def backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` failed launches in a row."""
        return min(self.max_backoff_s, self.restart_backoff_s * 2 ** max(0, failures - 1))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SGLangEngine(Engine):
    """LoRA serving through SGLang (see the module docstring)."""

    name = "sglang"

    def __init__(
        self,
        model_path: Path | None,
        base_model_name: str,
        *,
        options: SGLangOptions | None = None,
        initial_adapters: dict[str, Path] | None = None,
    ) -> None:
        self.options = options or SGLangOptions()
        if model_path is None and not self.options.upstream_url:
            raise ValueError("SGLangEngine needs model_path unless it attaches to upstream_url")
        if not self.options.upstream_url and (self.options.max_lora_rank < 1 or not self.options.lora_target_modules):
            raise ValueError("SGLangEngine needs max_lora_rank and lora_target_modules to launch SGLang")
        self.model_path = model_path
        self.base_model_name = base_model_name
        self._adapters: dict[str, Path] = dict(initial_adapters or {})  # what a (re)launch must load
        self._pool: UpstreamPool | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._url = self.options.upstream_url.rstrip("/") if self.options.upstream_url else ""
        self._ready = False
        self._detail = "not started"
        self._stopping = False
        self._output: deque[str] = deque(maxlen=20)  # SGLang's last output lines (stdout and stderr)
        self._readers: list[asyncio.Task[None]] = []
        self.restarts = 0
        self.failed = False  # gave up after start_attempts failed launches in a row

    # -- process supervision --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the SGLang server in use (empty before the first launch)."""
        return self._url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def launch_args(self, port: int) -> list[str]:
        """The child's command line for `port` (public so tests and logs can show it)."""
        o = self.options
        args = list(o.command or (sys.executable, "-m", "sglang.launch_server"))
        args += ["--model-path", str(self.model_path), "--served-model-name", self.base_model_name]
        args += ["--host", o.host, "--port", str(port), "--enable-lora", "--enable-metrics"]
        args += ["--max-loras-per-batch", str(o.max_loras_per_batch)]
        args += ["--max-lora-rank", str(o.max_lora_rank), "--lora-target-modules", *o.lora_target_modules]
        if self._adapters:
            args += ["--lora-paths", *(f"{name}={path}" for name, path in self._adapters.items())]
        return args + list(o.extra_args)

    async def start(self) -> None:
        self._stopping, self.failed = False, False
        if self.options.upstream_url:
            self._attach(self._url)
            await self._wait_healthy(time.monotonic() + self.options.startup_timeout_s)
        else:
            await self._launch_with_retries("start")
            self._supervisor = asyncio.create_task(self._supervise())
        self._ready, self._detail = True, ""

    async def _launch_with_retries(self, what: str) -> None:
        """Launch until healthy: up to `start_attempts` tries with backoff; then `failed` and EngineError."""
        attempts = self.options.start_attempts
        for attempt in range(1, attempts + 1):
            try:
                await self._launch()
                return
            except EngineError as exc:
                if self._stopping:
                    raise
                if attempt == attempts:
                    self.failed = True
                    self._detail = (f"SGLang {what} failed {attempts} times in a row, giving up (/health fails so the "
                                    f"platform restarts the server); last: {exc}")
                    log.error("%s", self._detail)
                    raise EngineError(self._detail) from exc
                delay = self.options.backoff(attempt)
                self._detail = f"SGLang {what} attempt {attempt}/{attempts} failed: {exc}; retrying in {delay:g} s"
                log.error("%s", self._detail)
                await asyncio.sleep(delay)

    async def _launch(self) -> None:
        port = self.options.port or free_port(self.options.host)
        self._attach(f"http://{self.options.host}:{port}")
        args = self.launch_args(port)
        log.info("launching SGLang: %s", " ".join(args))
        self._output.clear()
        self._process = await asyncio.create_subprocess_exec(
            *args, start_new_session=True, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        self._readers = [
            asyncio.create_task(self._echo(self._process.stdout, sys.stdout)),
            asyncio.create_task(self._echo(self._process.stderr, sys.stderr)),
        ]
        try:
            await self._wait_healthy(time.monotonic() + self.options.startup_timeout_s)
        except EngineError:
            await self._kill()
            raise

    async def _echo(self, stream: asyncio.StreamReader | None, sink: Any) -> None:
        """Copy the child's output to ours line by line, keeping the last lines for error reports."""
        if stream is None:
            return
        with contextlib.suppress(Exception):
            while line := await stream.readline():
                text = line.decode(errors="replace").rstrip()
                if text:
                    self._output.append(text)
                sink.write(text + "\n")
                sink.flush()

    def _last_output(self) -> str:
        """SGLang's last meaningful output line (its error), cut short; empty when it printed nothing."""
        for text in reversed(self._output):
            if text.strip() and not text.lstrip().startswith(("File ", "^", "~")):
                return text.strip()[:500]
        return ""

    def _attach(self, url: str) -> None:
        """Talk to the SGLang server at `url` from now on (a fresh connection pool)."""
        if self._pool is not None:
            self._pool.close()
        self._url = url
        o = self.options
        self._pool = UpstreamPool(url, connect_timeout_s=o.connect_timeout_s, read_timeout_s=o.read_timeout_s)

    async def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._process is not None and self._process.returncode is not None:
                with contextlib.suppress(TimeoutError):  # let the readers catch its last words
                    await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), 2)
                said = self._last_output()
                raise EngineError(f"SGLang exited with status {self._process.returncode} while starting"
                                  + (f": {said}" if said else ""))
            with contextlib.suppress(UpstreamError, TimeoutError):
                async with asyncio.timeout(self.options.health_timeout_s):
                    status, _ = await self._call("GET", "/health")
                if status == 200:
                    return
            await asyncio.sleep(self.options.health_interval_s)
        raise EngineError("SGLang did not become healthy in time")

    async def _supervise(self) -> None:
        """Relaunch the child whenever it exits unexpectedly; not ready until it is healthy again. After
        `start_attempts` failed relaunches in a row the engine gives up (`failed`, see the module docstring)."""
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            said = self._last_output()
            self._ready, self._detail = False, f"SGLang exited with status {code}; restarting" + (
                f" (it said: {said})" if said else "")
            log.error("%s", self._detail)
            await asyncio.sleep(self.options.restart_backoff_s)
            try:
                await self._launch_with_retries("restart")
            except EngineError:
                return
            self.restarts += 1
            self._ready, self._detail = True, ""

    async def _kill(self) -> None:
        proc = self._process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # SGLang runs scheduler/detokenizer children in its group
        try:
            await asyncio.wait_for(proc.wait(), self.options.stop_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if self._readers:
            await asyncio.wait(self._readers, timeout=2)

    async def stop(self) -> None:
        self._stopping = True
        self._ready, self._detail = False, "stopped"
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._kill()
        if self._pool is not None:
            self._pool.close()

    def health(self) -> EngineHealth:
        return EngineHealth(self._ready, self._detail)

    # -- adapters -------------------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One small request: status and whole body. Raises UpstreamError, or EngineNotReady before start()."""
        if self._pool is None:
            raise EngineNotReady("engine not started")
        conn = await self._pool.request(method, path, body)
        try:
            return conn.status, await conn.read()
        finally:
            conn.release()

    async def _admin_post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, raw = await self._call("POST", path, _json_bytes(payload))
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = {}
        return status, data if isinstance(data, dict) else {}

    async def load_adapter(self, name: str, path: Path) -> None:
        faults.check_load(name)
        try:
            status, data = await self._admin_post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except (UpstreamError, EngineNotReady) as exc:
            raise AdapterLoadError(f"SGLang unreachable while loading {name}") from exc
        if status != 200 or not data.get("success"):
            raise AdapterLoadError(str(data.get("error_message") or f"SGLang answered {status}"))
        self._adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)  # a relaunch must not bring it back, whatever happens below
        try:
            status, data = await self._admin_post("/unload_lora_adapter", {"lora_name": name})
        except UpstreamError as exc:
            raise EngineError(f"SGLang unreachable while unloading {name}") from exc
        if status != 200 or not data.get("success"):
            raise EngineError(str(data.get("error_message") or f"SGLang answered {status}"))

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    # -- chat -----------------------------------------------------------------------------------------------
    def payload(self, request: ChatRequest, *, stream: bool, include_usage: bool = False) -> dict[str, Any]:
        """SGLang's chat body: `<base>:<adapter>` selects the LoRA adapter."""
        body: dict[str, Any] = {
            "model": f"{self.base_model_name}:{request.adapter}" if request.adapter else self.base_model_name,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if stream and include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _post_chat(self, body: dict[str, Any]) -> UpstreamConnection:
        """SGLang's 200 response, its head read; failures before it map to EngineNotReady (503) or EngineError."""
        if not self._ready or self._pool is None:
            raise EngineNotReady(self._detail or "SGLang is not ready")
        try:
            conn = await self._pool.request("POST", "/v1/chat/completions", _json_bytes(body))
        except UpstreamError as exc:
            raise EngineNotReady("SGLang is unreachable") from exc
        if conn.status == 200:
            return conn
        try:
            text = (await conn.read()).decode(errors="replace")
        except UpstreamError:
            text = ""
        finally:
            conn.release()
        if conn.status in BUSY_STATUSES:
            raise EngineNotReady(f"SGLang is busy ({conn.status})")
        if conn.status == 400 and "context length" in text.lower():
            raise EngineRequestError(_error_message(text), param="messages", code="context_length_exceeded")
        raise EngineError(f"SGLang answered {conn.status}: {text[:300]}")

    async def open_sse(self, request: ChatRequest, *, include_usage: bool = False) -> UpstreamConnection:
        """SGLang's streaming response with its body unread, for `forward()` (the caller must `release()` it); an
        error event inside the stream stops the relay there (`conn.stream_error`, see relay.py)."""
        await faults.before_chat(request.adapter)
        conn = await self._post_chat(self.payload(request, stream=True, include_usage=include_usage))
        conn.watch_errors(SSE_ERROR_MARKER, find_sse_error)
        return conn

    async def stream_sse(self, request: ChatRequest, *, include_usage: bool = False) -> AsyncIterator[bytes]:
        """SGLang's SSE bytes as they arrive (OpenAI `chat.completion.chunk` events, then `[DONE]`)."""
        conn = await self.open_sse(request, include_usage=include_usage)
        try:
            async for piece in conn.iter_body():
                yield piece
        finally:
            conn.release()

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        if not request.stream:
            await faults.before_chat(request.adapter)
            conn = await self._post_chat(self.payload(request, stream=False))
            try:
                data = json.loads(await conn.read())
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
            except (json.JSONDecodeError, LookupError, TypeError, AttributeError) as exc:
                raise EngineError("SGLang sent an unreadable completion") from exc
            finally:
                conn.release()
            yield ChatDelta(text, choice.get("finish_reason") or "stop", _usage(data))
            return
        finish: str | None = None
        usage: Usage | None = None
        buffer = b""
        async for chunk in self.stream_sse(request, include_usage=True):
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                data = _event_json(event)
                if data is None:
                    continue
                error = _event_error(data)
                if error is not None:
                    raise error
                usage = _usage(data) or usage
                for choice in data.get("choices") or ():
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield ChatDelta(text)
        yield ChatDelta(finish_reason=finish or "stop", usage=usage)


#: Bytes every SGLang error event holds (a `"` inside JSON strings is escaped, so content never matches).
SSE_ERROR_MARKER = b'"error"'


def find_sse_error(payload: bytes) -> tuple[int, EngineError] | None:
    """The first error event in decoded SSE bytes (whole events): its offset and the error it reports."""
    start = 0
    while True:
        end = payload.find(b"\n\n", start)
        event = payload[start:] if end < 0 else payload[start:end]
        if SSE_ERROR_MARKER in event:
            with contextlib.suppress(EngineError):
                data = _event_json(event)
                error = _event_error(data) if data is not None else None
                if error is not None:
                    return start, error
        if end < 0:
            return None
        start = end + 2


def _event_error(data: dict[str, Any]) -> EngineError | None:
    """SGLang's in-stream error event (`{"error": {...}}`, or the error object itself) as an engine error."""
    error = data.get("error") if isinstance(data.get("error"), dict) else data
    if error.get("object") != "error" and data.get("error") is not error:
        return None
    message = str(error.get("message") or "SGLang reported an error")[:500]
    code = error.get("code")
    if isinstance(code, int) and 400 <= code < 500 and code != 429:
        return EngineRequestError(message, code=str(error.get("type") or "invalid_request_error"))
    return EngineError(f"SGLang failed mid-stream ({code}): {message}")


def _json_bytes(body: dict[str, Any]) -> bytes:
    """Compact JSON, as SGLang's request body."""
    return json.dumps(body, separators=(",", ":")).encode()


def _error_message(text: str) -> str:
    """The `message` of SGLang's error body (`{"object": "error", "message", ...}`), else the text, cut short."""
    with contextlib.suppress(json.JSONDecodeError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"][:300]
    return text[:300]


def _event_json(event: bytes) -> dict[str, Any] | None:
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return None
    try:
        parsed = json.loads(data)
    except json.JSONDecodeError as exc:
        raise EngineError("SGLang sent a malformed SSE event") from exc
    return parsed if isinstance(parsed, dict) else None


def _usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
