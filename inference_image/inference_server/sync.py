"""Manifest converger: makes the served adapters match the adapter store's manifest.

One `sync_once()` at a time (a lock): read the manifest, verify and load new or changed adapters (identity =
sha256 over the folder, checked against the manifest before loading), point the alias at the active adapter,
then retire adapters the manifest dropped, then load (or drop) the canary candidate and set its weight. A bad adapter
is skipped: the previous version keeps serving and the error is reported by `/ready` (`load_errors`, by adapter
name, the entry's `version` saying which) until a later sync loads it or the manifest drops it. A refused candidate
is reported the same way and takes no traffic (nor does the candidate it was to replace).
`run()` repeats this on an interval. After every sync, `on_synced` runs (the server writes its replica report,
replica_state.py).

The alias never falls back to the base model silently: from start until the manifest's active adapter is loaded
(or while it is refused with nothing served before it), the alias is unavailable (503 with the reason). Only a
manifest without an active adapter, or no manifest at all, makes it mean the base model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engines.base import AdapterLoadError, EngineError
from .manifest import Manifest, ManifestError, adapter_digest, read_manifest
from .registry import AdapterRegistry

log = logging.getLogger(__name__)
#: How long a sync waits for retired adapters' in-flight requests before loading new ones.
RETIRE_WAIT_S = 10.0


class AdapterVerifyError(AdapterLoadError):
    """The adapter folder is missing or its content digest differs from the manifest."""


@dataclass(frozen=True)
class SyncReport:
    """Outcome of one sync: what changed and what failed (adapter name → reason)."""

    loaded: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    active: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "loaded": self.loaded, "retired": self.retired, "errors": self.errors,
                "active": self.active}


class ManifestSyncer:
    """Converges an `AdapterRegistry` on the manifest in `store` (no store: nothing to converge)."""

    def __init__(self, registry: AdapterRegistry, store: Path | None,
                 on_synced: Callable[[], Awaitable[None]] | None = None) -> None:
        """`on_synced` runs after every sync (also a failed one), still under the sync lock: the replica report."""
        self._registry = registry
        self._store = store
        self._on_synced = on_synced
        self._lock = asyncio.Lock()
        self.desired: Manifest | None = None
        self.last_report: SyncReport | None = None
        self.last_error: str | None = None
        self.last_sync_at: float | None = None
        #: Syncs finished with their `on_synced` done (the replica report written): what a test waits for.
        self.completed = 0
        #: Manifest adapters the latest sync could not load: name → {"version", "sha256", "reason"}.
        self.load_errors: dict[str, dict[str, str]] = {}
        if store is not None:
            registry.set_unavailable("the adapter store has not been read yet")

    @property
    def converged(self) -> bool:
        """True when the alias serves the manifest's active adapter and the candidate (version, digest and weight)
        is the manifest's (the replica report's `converged`)."""
        if not self.alias_converged:
            return False
        want, have = self.desired.candidate if self.desired else None, self._registry.candidate
        if want is None or have is None:
            return want is None and have is None
        return (have.version, have.sha256, self._registry.candidate_weight) == (want.version, want.sha256, want.weight)

    @property
    def alias_converged(self) -> bool:
        """True when the alias serves the manifest's active adapter at the manifest's digest (what `/ready` needs)."""
        if self.last_report is None:
            return False
        if self.desired is None:
            return self.last_error is None
        want = self.desired.active
        active = self._registry.active_ref
        if want is None:
            return active is None
        return active is not None and active.name == want and active.sha256 == self.desired.adapters[want].sha256

    async def sync_once(self) -> SyncReport:
        async with self._lock:
            try:
                report = await self._sync()
            except EngineError:
                await self._synced()
                self.completed += 1
                raise
            await self._synced()
            self.completed += 1
            return report

    async def _synced(self) -> None:
        if self._on_synced is not None:
            await self._on_synced()

    async def _sync(self) -> SyncReport:
        """One sync (under the lock): read the manifest and converge on it."""
        try:
            manifest = read_manifest(self._store) if self._store else None
        except (ManifestError, OSError) as exc:
            self.last_error = f"manifest: {exc}"
            log.warning("manifest unreadable, keeping the served adapters: %s", exc)
            if self._registry.unavailable is not None:
                self._registry.set_unavailable(f"the manifest is unreadable: {exc}")
            return self._finish(SyncReport(errors={"manifest": str(exc)}, active=self._registry.active))
        if manifest is None:  # none (e.g. a first deploy rolled back): the alias means the base model
            self.desired, self.load_errors = None, {}
            self._registry.set_active(None)
            retired = await self._retire(Manifest(adapters={}, active=None)) + await self._drop_candidate()
            return self._finish(SyncReport(retired=retired, active=self._registry.active))
        self.desired = manifest
        report = await self._converge(manifest)
        self.load_errors = {
            name: {"version": entry.version, "sha256": entry.sha256, "reason": report.errors[name]}
            for name, entry in manifest.adapters.items()
            if name in report.errors
        }
        candidate = manifest.candidate
        if candidate is not None and candidate.version in report.errors:
            # By adapter name like the others; by version only when the live entry of that name failed too.
            key = candidate.version if candidate.adapter in self.load_errors else candidate.adapter
            self.load_errors[key] = {"version": candidate.version, "sha256": candidate.sha256,
                                     "reason": report.errors[candidate.version]}
        return self._finish(report)

    def _finish(self, report: SyncReport) -> SyncReport:
        self.last_report = report
        self.last_sync_at = time.time()
        self.last_error = "; ".join(f"{k}: {v}" for k, v in report.errors.items()) or None
        return report

    async def _converge(self, manifest: Manifest) -> SyncReport:
        registry, store = self._registry, self._store
        assert store is not None
        loaded: list[str] = []
        errors: dict[str, str] = {}
        retired = await self._retire(manifest)  # first, so the engine has room for what the manifest adds
        if retired:
            with contextlib.suppress(TimeoutError):  # their in-flight requests end first (bounded)
                await asyncio.wait_for(registry.wait_freed(), RETIRE_WAIT_S)
        for name, entry in manifest.adapters.items():
            current = registry.get(name)
            if current is not None and current.sha256 == entry.sha256 and current.version == entry.version:
                continue
            path = store / entry.path
            try:
                await self._verify(path, entry.sha256)
                await registry.load(name, path, entry.sha256, entry.version)
            except AdapterLoadError as exc:
                errors[name] = str(exc)
                log.warning("adapter %s (version %s) not loaded: %s", name, entry.version, exc)
                continue
            loaded.append(name)
        want = manifest.active
        if want is None or (want not in errors and registry.get(want) is not None):
            registry.set_active(want, manifest.alias)
        elif registry.active is None:  # nothing served before it: the alias answers 503, never the base model
            reason = errors.get(want, "not loaded yet")
            registry.set_unavailable(
                f"adapter '{want}' (version {manifest.adapters[want].version}) is not loaded: {reason}", manifest.alias
            )
        # else: the new active adapter failed; the alias keeps serving the previous one.
        retired += await self._retire(manifest)
        retired += await self._converge_candidate(manifest, loaded, errors)
        return SyncReport(loaded=loaded, retired=retired, errors=errors, active=registry.active)

    async def _converge_candidate(self, manifest: Manifest, loaded: list[str], errors: dict[str, str]) -> list[str]:
        """Load the manifest's candidate (or only set its weight), or drop it; its version goes into `loaded` or
        `errors`, a dropped one's into the list returned."""
        want, registry = manifest.candidate, self._registry
        if want is None:
            return await self._drop_candidate()
        have = registry.candidate
        fresh = have is None or (have.sha256, have.version) != (want.sha256, want.version)
        path = self._store / want.path if self._store else Path(want.path)
        try:
            if fresh:
                await self._verify(path, want.sha256)
            await registry.load_candidate(want.adapter, path, want.sha256, want.version, want.weight)
        except AdapterLoadError as exc:
            errors[want.version] = str(exc)
            log.warning("candidate %s (version %s) not loaded: %s", want.adapter, want.version, exc)
            return await self._drop_candidate()
        if fresh:
            loaded.append(want.version)
        return []

    async def _drop_candidate(self) -> list[str]:
        dropped = await self._registry.unload_candidate()
        return [dropped.version] if dropped else []

    async def _retire(self, manifest: Manifest) -> list[str]:
        """Unload the adapters the manifest dropped, except the one the alias serves now."""
        retired: list[str] = []
        for ref in self._registry.refs():
            if ref.name not in manifest.adapters and ref.name != self._registry.active:
                await self._registry.unload(ref.name)
                retired.append(ref.name)
        return retired

    @staticmethod
    async def _verify(path: Path, sha256: str) -> None:
        if not path.is_dir():
            raise AdapterVerifyError(f"adapter folder {path.name!r} not found in the store")
        digest = await asyncio.to_thread(adapter_digest, path)
        if digest != sha256:
            raise AdapterVerifyError(f"content digest {digest[:12]} does not match the manifest's {sha256[:12]}")

    async def run(self, interval_s: float) -> None:
        """Sync forever, every `interval_s` seconds (cancel to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync_once()
            except EngineError:
                log.exception("sync failed; retrying in %.0f s", interval_s)

    def status(self) -> dict[str, Any]:
        desired = self.desired
        return {
            "desired_active": desired.active if desired else None,
            "desired_version": desired.active_version if desired else None,
            "last_sync_at": self.last_sync_at,
            "last_sync_error": self.last_error,
            "load_errors": self.load_errors,
        }
