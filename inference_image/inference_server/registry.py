"""Adapter registry: which adapters are served, what the alias routes to, and who is using each one.

Lifecycle of an adapter (after SGLang's `lora_registry.py`):
- load: a frozen `AdapterRef` with a unique id is built, the engine loads it under `ref.engine_name` (unique per
  ref), and only then is the ref committed under its name. A failed load leaves routing exactly as it was.
- route: `acquire(model, key)` resolves base name / alias / adapter name / version string and counts the request in
  flight against the resolved ref until `Lease.release()`. The alias routes to the active adapter, to the base model
  when there is none, or, while `unavailable` says why (the wanted adapter is not loaded), nowhere: never silently
  to the base. With a canary candidate loaded at a weight > 0, the alias sends the callers `assigned()` picks to the
  candidate instead (the same callers on every replica: a hash of the caller's key salted by the candidate's version).
- candidate: one more ref beside the adapters (`load_candidate`), reachable by its version string and by the alias
  at its weight; when the manifest promotes it (an adapter entry with its name, digest and version), `load()` adopts
  the loaded ref instead of loading it again.
- unload: the ref is unregistered first (no new request can resolve it), then a background task waits for its
  in-flight count to reach zero, then the engine frees it (so a sync never blocks on long streams).
Load and unload of one name are serialized by a per-name asyncio lock.

Everything on the request path is synchronous: resolve + count happen in one event-loop step, so no await can
interleave between "a request picked ref R" and "R's in-flight count went up".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
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


#: The `_lock()` key of the candidate's load and unload (not an adapter name: those are path-safe words).
_CANDIDATE_LOCK = "\0candidate"


def bucket(version: str, key: str) -> float:
    """The caller's place in [0, 1) for the candidate `version` (docs/rollouts.md): the first 32 bits of
    sha256("<version>\\n<key>"). Salted by the version, so one rollout keeps its callers from step to step."""
    return int(hashlib.sha256(f"{version}\n{key}".encode()).hexdigest()[:8], 16) / 2**32


def assigned(version: str, weight: float, key: str | None) -> bool:
    """Whether an alias request goes to the candidate `version` at `weight`: by the caller's bucket when it has a
    key, else by a per-request draw. Weight 0 never does, weight 1 always does."""
    if weight <= 0.0:
        return False
    if key:
        return bucket(version, key) < weight
    return random.random() < weight


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

    @property
    def label(self) -> str:
        """What per-version metrics key this route by: the version, or the base model's name."""
        return self.ref.version if self.ref else self.served_model


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
        self.candidate: AdapterRef | None = None  # the canary candidate, loaded beside the adapters
        self.candidate_weight = 0.0  # share of the alias's callers it gets
        self._versions: dict[str, AdapterRef] = {}  # every routable ref by version string
        self._inflight: dict[str, _InFlight] = {}  # by ref id
        self._locks: dict[str, asyncio.Lock] = {}
        self._freeing: set[asyncio.Task[None]] = set()

    # -- request path -------------------------------------------------------------------------------------
    def route(self, model: str, key: str | None = None) -> Route:
        """Resolve `model` without counting: base name, alias (the candidate for the callers `assigned()` picks by
        `key`), adapter name, then any loaded version string."""
        if model == self.base_model_name:
            return Route(model, None)
        name = model
        if model == self.alias:
            candidate = self.candidate
            if candidate is not None and assigned(candidate.version, self.candidate_weight, key):
                return Route(candidate.name, candidate)
            if self.active is None:
                if self.unavailable is not None:
                    raise AliasUnavailableError(model, self.unavailable)
                return Route(self.base_model_name, None)
            name = self.active
        ref = self._refs.get(name) or self._versions.get(model)
        if ref is None:
            raise UnknownModelError(model)
        return Route(ref.name, ref)

    def acquire(self, model: str, key: str | None = None) -> Lease:
        """Resolve and count the request in flight (synchronous: see the module docstring)."""
        route = self.route(model, key)
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
        """The adapters (the candidate is not one of them), by name."""
        return sorted(self._refs.values(), key=lambda r: r.name)

    def _index(self) -> None:
        """Rebuild the version index after a commit or an unregister (synchronous, like routing)."""
        refs = [*self._refs.values(), *([self.candidate] if self.candidate else [])]
        self._versions = {ref.version: ref for ref in refs}

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
            candidate = self.candidate
            if candidate is not None and (candidate.name, candidate.sha256, candidate.version) == (name, sha256, version):
                # Promotion: the candidate's loaded ref becomes the adapter's, nothing is loaded again.
                self._refs[name], self.candidate, self.candidate_weight = candidate, None, 0.0
                self._retire_old(old)
                return candidate
            ref = AdapterRef(name=name, path=path, sha256=sha256, version=version)
            # Race: a request for `name` arriving while the engine loads still resolves `old` (not yet replaced).
            await self._engine.load_adapter(ref.engine_name, path)
            self._inflight[ref.id] = _InFlight()
            self._refs[name] = ref  # commit: from here on new requests resolve the new ref
            self._retire_old(old)
            return ref

    def _retire_old(self, old: AdapterRef | None) -> None:
        self._index()
        if old is not None:
            self._schedule_free(old)

    async def load_candidate(self, name: str, path: Path, sha256: str, version: str, weight: float) -> AdapterRef:
        """Load the canary candidate (a version of adapter `name`) and give it `weight` of the alias's callers; the
        previous candidate, if another, is retired. Raises the engine's `AdapterLoadError` with no candidate left
        (a refused candidate takes no traffic, nor does the one it replaces)."""
        async with self._lock(_CANDIDATE_LOCK):
            old = self.candidate
            if old is not None and (old.name, old.sha256, old.version) == (name, sha256, version):
                self.candidate_weight = weight
                return old
            self.candidate, self.candidate_weight = None, 0.0  # the old one takes no new request from here on
            self._retire_old(old)
            ref = AdapterRef(name=name, path=path, sha256=sha256, version=version)
            await self._engine.load_adapter(ref.engine_name, path)
            self._inflight[ref.id] = _InFlight()
            self.candidate, self.candidate_weight = ref, weight  # commit
            self._index()
            return ref

    async def unload_candidate(self) -> AdapterRef | None:
        """Unregister the candidate (no new request resolves it), free it once its requests ended; the one dropped."""
        async with self._lock(_CANDIDATE_LOCK):
            old, self.candidate, self.candidate_weight = self.candidate, None, 0.0
            self._retire_old(old)
            return old

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
            self._retire_old(ref)

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
