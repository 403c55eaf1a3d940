"""A deterministic in-process engine for server tests: replies name the adapter that served them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from inference_server.engines.base import (
    AdapterLoadError,
    ChatDelta,
    ChatRequest,
    Engine,
    EngineHealth,
    EngineNotReady,
    Usage,
)

BAD_MARKER = "BAD"  # an adapter folder holding this file fails to load


class EchoEngine(Engine):
    """Streams `[<adapter>]` then `tokens` numbered words, `delay_s` apart; records loads and unloads.

    A prompt's tokens are its words; `context_length` is unset unless a test sets it. While `load_gate` is set
    and not open, adapter loads wait for it.
    """

    name = "echo"

    def __init__(self, tokens: int = 4, delay_s: float = 0.0, max_adapters: int | None = None) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self.max_adapters = max_adapters  # like an engine's max_loras: a load beyond it is refused
        self.load_gate: asyncio.Event | None = None
        self.ready = False
        self.busy = False  # True: every request is refused as overloaded
        self.adapters: dict[str, Path] = {}
        self.events: list[tuple[str, str]] = []
        self.requests: list[ChatRequest] = []
        self.in_use: dict[str, int] = {}

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    def health(self) -> EngineHealth:
        return EngineHealth(self.ready, "" if self.ready else "stopped")

    async def load_adapter(self, name: str, path: Path) -> None:
        await asyncio.sleep(0)
        if self.load_gate is not None:
            await self.load_gate.wait()
        if (path / BAD_MARKER).exists():
            raise AdapterLoadError(f"cannot load {path.name}: tensor shapes do not match")
        if self.max_adapters is not None and len(self.adapters) >= self.max_adapters:
            raise AdapterLoadError(f"cannot load {path.name}: already holding {self.max_adapters} adapters")
        self.adapters[name] = path
        self.events.append(("load", name))

    async def unload_adapter(self, name: str) -> None:
        assert self.in_use.get(name, 0) == 0, f"{name} unloaded while in use"
        del self.adapters[name]
        self.events.append(("unload", name))

    def loaded_adapters(self) -> list[str]:
        return list(self.adapters)

    async def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        return sum(len(m["content"].split()) for m in messages)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        if self.busy:
            raise EngineNotReady("queue full")
        adapter = request.adapter
        if adapter is not None and adapter not in self.adapters:
            raise AssertionError(f"routed to unloaded adapter {adapter}")
        self.requests.append(request)
        key = adapter or "base"
        self.in_use[key] = self.in_use.get(key, 0) + 1
        try:
            label = self.adapters[adapter].name if adapter else "base"
            yield ChatDelta(f"[{label}]")
            count = min(self.tokens, request.max_tokens)
            for i in range(count):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield ChatDelta(f" t{i}")
            yield ChatDelta(finish_reason="length" if count < self.tokens else "stop", usage=Usage(3, count + 1))
        finally:
            self.in_use[key] -= 1
