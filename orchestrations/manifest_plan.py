"""Pure planning of manifest changes (no I/O, so orchestrators can call it while replaying)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from inference_image.inference_server.manifest import AdapterEntry, CandidateEntry, Manifest

#: Adapters kept loaded per app (the newest deployments; the active and the previous active are never dropped).
MAX_ADAPTERS = 8


def adapter_version(adapter: str, sha256: str) -> str:
    """The served version string of an adapter's content: readable and unique per content."""
    return f"{adapter}@{sha256[:12]}"


def activate(
    previous: Manifest | None,
    adapter: str,
    entry: AdapterEntry,
    now: datetime,
    base_model: str | None = None,
    max_adapters: int = MAX_ADAPTERS,
) -> Manifest:
    """The manifest with `adapter` (re)deployed last and active; the oldest others retired past the cap."""
    old = previous or Manifest(base_model=base_model)
    adapters = {name: e for name, e in old.adapters.items() if name != adapter}
    adapters[adapter] = entry
    protected = {adapter, old.active}
    while len(adapters) > max_adapters:
        oldest = next(name for name in adapters if name not in protected)
        del adapters[oldest]
    return Manifest(
        adapters=adapters,
        active=adapter,
        alias=old.alias,
        base_model=old.base_model or base_model,
        updated_at=now.isoformat(),
    )


def with_candidate(previous: Manifest | None, candidate: CandidateEntry, now: datetime,
                   base_model: str | None = None) -> Manifest:
    """`previous` unchanged but for its candidate (the version a gated rollout is trying, at its weight)."""
    old = previous or Manifest(base_model=base_model)
    return replace(old, candidate=candidate, base_model=old.base_model or base_model, updated_at=now.isoformat())
