"""The running server's state: engine, adapter registry, manifest syncer, metrics, and drain bookkeeping.

`ServerState.start()` brings the engine up and converges once, then keeps syncing in the background; the HTTP
layer stays alive meanwhile (`/health` answers, `/ready` and chat answer 503). `drain()` stops admitting chat
requests and waits for the running ones, for graceful shutdown. On start, after every sync and when the engine
fails to start, the replica writes its observed state (`observed()`, replica_state.py); a graceful stop removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .config import ServerConfig
from .engines.base import Engine, EngineError
from .generation import read_sampling_defaults
from .metrics import ServerMetrics, VersionMetrics
from .protocol import unavailable
from .registry import AdapterRegistry
from .replica_state import ReplicaReporter, replica_id
from .sync import ManifestSyncer

log = logging.getLogger(__name__)


def build_engine(config: ServerConfig) -> Engine:
    """The engine named by the config (imported lazily: torch and sglang are heavy and optional)."""
    if config.engine == "sglang":
        from .engines.sglang_engine import SGLangEngine, SGLangOptions

        return SGLangEngine(config.model_path, config.base_model_name, options=SGLangOptions.from_settings(config.sglang))
    from .engines.transformers_engine import TransformersEngine

    return TransformersEngine(config.model_path, config.base_model_name, max_queue=config.max_queue)


class ServerState:
    """Shared by every handler of one app (stored under an `AppKey`)."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.sampling_defaults = read_sampling_defaults(config.model_path)
        self.registry = AdapterRegistry(engine, config.base_model_name, config.alias)
        self.reporter = ReplicaReporter(config.replica_state_path, replica_id(), config.sync_interval_s)
        self.syncer = ManifestSyncer(self.registry, config.adapter_store, self.report)
        self.metrics = ServerMetrics(lambda: len(self.registry.refs()), lambda: self.in_flight)
        self.versions = VersionMetrics()
        self.in_flight = 0
        self.draining = False
        self.started = False
        self.start_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._sync_task: asyncio.Task[None] | None = None

    # -- request admission ----------------------------------------------------------------------------------
    def check_admission(self) -> None:
        """Raise a 503 while draining or while the engine is not ready."""
        if self.draining:
            raise unavailable("The server is shutting down")
        if not self.started or not self.engine.health().ready:
            raise unavailable("The engine is not ready")

    def begin(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new chat requests, wait up to `timeout_s` for running ones; True when all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d requests still running", self.in_flight)
            return False
        return True

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.report()  # a starting replica is seen at once (an engine may take minutes to come up)
        try:
            await self.engine.start()
        except EngineError as exc:
            self.start_error = f"engine failed to start: {exc}"
            log.error("%s", self.start_error)
            await self.report()
            return
        self.started = True
        await self.syncer.sync_once()
        if self.config.adapter_store is not None:
            self._sync_task = asyncio.create_task(self.syncer.run(self.config.sync_interval_s))

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await asyncio.to_thread(self.reporter.remove)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.wait_freed(), 5)
        await self.engine.stop()

    # -- reporting ------------------------------------------------------------------------------------------
    async def report(self) -> None:
        """Write this replica's report (a thread: the store may be a network share); never raises for I/O."""
        await asyncio.to_thread(self.reporter.write, self.observed())

    def observed(self) -> dict[str, Any]:
        """What this replica serves now, as its report carries it (replica_state.py)."""
        registry, syncer = self.registry, self.syncer
        active = registry.active_ref
        return {
            "alias": registry.alias,
            "alias_target": registry.alias_target,
            "alias_version": active.version if active else None,
            "alias_unavailable": registry.unavailable if active is None else None,
            "adapters": {ref.name: {"version": ref.version, "sha256": ref.sha256} for ref in registry.refs()},
            "load_errors": syncer.load_errors,
            "candidate": self.candidate(),
            "metrics": self.versions.snapshot(),
            "manifest_updated_at": syncer.desired.updated_at if syncer.desired else None,
            "converged": syncer.converged,
            "engine_ready": self.started and self.engine.health().ready,
            "draining": self.draining,
            "last_sync_error": syncer.last_error or self.start_error,
        }

    def candidate(self) -> dict[str, Any] | None:
        """The canary candidate as served (`loaded`), else the manifest's not (yet) loaded one, else None."""
        ref, want = self.registry.candidate, self.syncer.desired.candidate if self.syncer.desired else None
        if ref is not None:
            return {"adapter": ref.name, "version": ref.version, "weight": self.registry.candidate_weight,
                    "loaded": True}
        if want is not None:
            return {"adapter": want.adapter, "version": want.version, "weight": want.weight, "loaded": False}
        return None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = engine up, desired adapter served by the alias, not draining (the candidate does not count: its
        `candidate` entry says how it stands); with the details either way."""
        health = self.engine.health()
        active = self.registry.active_ref
        ready = self.started and health.ready and self.syncer.alias_converged and not self.draining
        detail: dict[str, Any] = {
            "ready": ready,
            "engine": {"name": self.engine.name, "ready": health.ready, "detail": health.detail or self.start_error},
            "draining": self.draining,
            "alias": self.registry.alias,
            "served_model": self.registry.alias_target,
            "served_version": active.version if active else None,
            "candidate": self.candidate(),
            **self.syncer.status(),
        }
        return ready, detail
