"""Adapter registry: which adapters are served, what the alias routes to, and who is using each one.

Lifecycle of an adapter (after SGLang's `lora_registry.py`):
- load: a frozen `AdapterRef` with a unique id is built, the engine loads it under `ref.engine_name` (unique per
  ref), and only then is the ref committed under its name. A failed load leaves routing exactly as it was.
- route: `acquire(model)` resolves base name / alias / adapter name and counts the request in flight against the
  resolved ref until `Lease.release()`. The alias routes to the active adapter, to the base model when there is
  none, or, while `unavailable` says why (the wanted adapter is not loaded), nowhere: never silently to the base.
- unload: the ref is unregistered first (no new request can resolve it), then a background task waits for its
  in-flight count to reach zero, then the engine frees it (so a sync never blocks on long streams).
Load and unload of one name are serialized by a per-name asyncio lock.

Everything on the request path is synchronous: resolve + count happen in one event-loop step, so no await can
interleave between "a request picked ref R" and "R's in-flight count went up".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .engines.base import Engine, EngineError

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """The requested model is neither the base model, the alias nor a served adapter."""


class AliasUnavailableError(LookupError):
    """The alias names an adapter that is not loaded (args: model, reason); it never falls back to the base."""


class AliasTargetError(ValueError):
    """The adapter cannot be unloaded while the alias routes to it."""


@dataclass(frozen=True)
class AdapterRef:
    """One loaded adapter version. `engine_name` is unique per ref, so a new version never shadows an old one."""

    name: str
    path: Path
    sha256: str
    version: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def engine_name(self) -> str:
        return f"{self.name}-{self.id[:12]}"


class _InFlight:
    """In-flight count of one ref, with an event set whenever the count is zero."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


@dataclass(frozen=True)
class Route:
    """Where a request goes: `ref` None means the base model."""

    served_model: str
    ref: AdapterRef | None

    @property
    def version(self) -> str | None:
        return self.ref.version if self.ref else None


class Lease:
    """A routed request; `release()` (idempotent) ends its in-flight count."""

    __slots__ = ("route", "_counter")

    def __init__(self, route: Route, counter: _InFlight | None) -> None:
        self.route = route
        self._counter = counter

    def release(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.count -= 1
            if counter.count == 0:
                counter.idle.set()


class AdapterRegistry:
    """Served adapters by name, the alias target, and per-ref in-flight counts."""

    def __init__(self, engine: Engine, base_model_name: str, alias: str) -> None:
        self._engine = engine
        self.base_model_name = base_model_name
        self.alias = alias
        self.active: str | None = None  # adapter name the alias routes to; None: base model (or unavailable)
        self.unavailable: str | None = None  # with `active` None: why the alias cannot be served
        self._refs: dict[str, AdapterRef] = {}
        self._inflight: dict[str, _InFlight] = {}  # by ref id
        self._locks: dict[str, asyncio.Lock] = {}
        self._freeing: set[asyncio.Task[None]] = set()

    # -- request path -------------------------------------------------------------------------------------
    def route(self, model: str) -> Route:
        """Resolve `model` without counting (for /v1/models and headers)."""
        if model == self.base_model_name:
            return Route(model, None)
        name = model
        if model == self.alias:
            if self.active is None:
                if self.unavailable is not None:
                    raise AliasUnavailableError(model, self.unavailable)
                return Route(self.base_model_name, None)
            name = self.active
        ref = self._refs.get(name)
        if ref is None:
            raise UnknownModelError(model)
        return Route(ref.name, ref)

    def acquire(self, model: str) -> Lease:
        """Resolve and count the request in flight (synchronous: see the module docstring)."""
        route = self.route(model)
        if route.ref is None:
            return Lease(route, None)
        counter = self._inflight[route.ref.id]
        counter.count += 1
        counter.idle.clear()
        return Lease(route, counter)

    # -- views --------------------------------------------------------------------------------------------
    def get(self, name: str) -> AdapterRef | None:
        return self._refs.get(name)

    def refs(self) -> list[AdapterRef]:
        return sorted(self._refs.values(), key=lambda r: r.name)

    def in_flight(self, ref: AdapterRef) -> int:
        counter = self._inflight.get(ref.id)
        return counter.count if counter else 0

    @property
    def active_ref(self) -> AdapterRef | None:
        return self._refs.get(self.active) if self.active else None

    @property
    def alias_target(self) -> str | None:
        """What the alias serves: the active adapter's name, the base model's, or None while unavailable."""
        if self.active is not None:
            return self.active
        return None if self.unavailable else self.base_model_name

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, path: Path, sha256: str, version: str) -> AdapterRef:
        """Load a new version of `name`; commit only after the engine succeeded, then retire the old version.

        Raises the engine's `AdapterLoadError`, leaving the previous version (if any) committed and serving.
        """
        async with self._lock(name):
            old = self._refs.get(name)
            if old is not None and old.sha256 == sha256 and old.version == version:
                return old
            ref = AdapterRef(name=name, path=path, sha256=sha256, version=version)
            # Race: a request for `name` arriving while the engine loads still resolves `old` (not yet replaced).
            await self._engine.load_adapter(ref.engine_name, path)
            self._inflight[ref.id] = _InFlight()
            self._refs[name] = ref  # commit: from here on new requests resolve the new ref
            if old is not None:
                self._schedule_free(old)
            return ref

    async def unload(self, name: str) -> None:
        """Unregister `name`, wait for its in-flight requests, then free it in the engine."""
        async with self._lock(name):
            ref = self._refs.get(name)
            if ref is None:
                return
            if self.active == name:
                # Race: retiring the alias target would make the alias fail; sync moves the alias first.
                raise AliasTargetError(f"adapter {name!r} is the alias target; move the alias before unloading it")
            del self._refs[name]  # unregister first: no request can resolve it any more
            self._schedule_free(ref)

    def _schedule_free(self, ref: AdapterRef) -> None:
        task = asyncio.create_task(self._free(ref))
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def wait_freed(self) -> None:
        """Wait until every retired ref has been freed in the engine."""
        while self._freeing:
            await asyncio.gather(*self._freeing, return_exceptions=True)

    @property
    def retiring(self) -> int:
        """Retired refs still waiting for their in-flight requests."""
        return len(self._freeing)

    async def _free(self, ref: AdapterRef) -> None:
        # Race: requests that resolved `ref` before it was unregistered are still generating; wait for them.
        counter = self._inflight[ref.id]
        await counter.idle.wait()
        del self._inflight[ref.id]
        try:
            await self._engine.unload_adapter(ref.engine_name)
        except EngineError:
            # Nothing routes to it any more; a failed free only costs memory until the engine restarts.
            log.exception("engine failed to unload %s", ref.engine_name)
            return
        log.info("unloaded adapter %s (%s, version %s)", ref.name, ref.engine_name, ref.version)

    def set_active(self, name: str | None, alias: str | None = None) -> None:
        """Point the alias at adapter `name` (None: base). Synchronous, so it is atomic for requests."""
        if name is not None and name not in self._refs:
            raise UnknownModelError(name)
        if alias:
            self.alias = alias
        self.active, self.unavailable = name, None

    def set_unavailable(self, reason: str, alias: str | None = None) -> None:
        """The alias answers 503 with `reason` until `set_active` (its adapter is not loaded, nothing to fall back on)."""
        if alias:
            self.alias = alias
        self.active, self.unavailable = None, reason
