"""The engine interface shared by the SGLang (GPU) and transformers (CPU) engines.

Design: the HTTP layer validates an OpenAI request into a `ChatRequest` (protocol.py) and resolves `model` to an
adapter name (or None for the base model) before calling the engine. The engine only generates. It yields
`ChatDelta`s: text pieces as they are produced, then one final delta carrying `finish_reason` and `usage`.
Engines that already speak OpenAI SSE (SGLang) may also offer `open_sse(request, include_usage=...)`, returning a
`relay.UpstreamConnection` whose body the server relays socket to socket, so it does not re-encode every chunk.

Adapter lifecycle: `load_adapter(name, path)` must leave the engine serving exactly as before when it raises;
`unload_adapter(name)` is only called after the server stopped routing to `name` and its in-flight count is zero.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EngineError(RuntimeError):
    """The engine failed to serve a request (a 5xx for the client)."""


class EngineNotReady(EngineError):
    """The engine is starting, restarting or overloaded (a 503 with Retry-After)."""


class AdapterLoadError(EngineError, ValueError):
    """An adapter could not be loaded; the engine keeps serving what it served before."""


class EngineRequestError(EngineError, ValueError):
    """The engine refused this request as invalid (a 400 for the client), e.g. a prompt over the context."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request. `adapter` is None for the base model."""

    messages: list[dict[str, Any]]
    adapter: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatDelta:
    """A piece of generated text; the last delta of a generation has `finish_reason` and `usage` set."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class EngineHealth:
    ready: bool
    detail: str = ""


class Engine(abc.ABC):
    """Generates chat completions for a base model and the LoRA adapters loaded into it."""

    #: Short engine name, as shown in /health and /metrics.
    name: str = "engine"
    #: Tokens the model attends over (prompt + completion); None while unknown (before `start()`, or not read).
    context_length: int | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the base model / start the backend. Returns when the engine can serve."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release the model / stop the backend."""

    @abc.abstractmethod
    def health(self) -> EngineHealth:
        """Cheap, non-blocking readiness of the engine itself."""

    @abc.abstractmethod
    async def load_adapter(self, name: str, path: Path) -> None:
        """Load (or replace) adapter `name` from folder `path`. Raises AdapterLoadError, serving unchanged."""

    @abc.abstractmethod
    async def unload_adapter(self, name: str) -> None:
        """Free adapter `name`. Called only when no request uses it any more."""

    @abc.abstractmethod
    def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Generate: text deltas, then a final delta with finish_reason and usage."""

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters the engine holds now."""
        return []

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """Tokens of `messages` after the chat template; None when this engine has no tokenizer at hand."""
        return None
