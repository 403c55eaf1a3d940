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
    _retire_oldest(adapters, {adapter, old.active}, max_adapters)
    return Manifest(
        adapters=adapters,
        active=adapter,
        alias=old.alias,
        base_model=old.base_model or base_model,
        updated_at=now.isoformat(),
    )


def _retire_oldest(adapters: dict[str, AdapterEntry], protected: set[str | None], cap: int) -> None:
    while len(adapters) > cap:
        oldest = next(name for name in adapters if name not in protected)
        del adapters[oldest]


def with_candidate(previous: Manifest | None, candidate: CandidateEntry, now: datetime,
                   base_model: str | None = None, max_adapters: int = MAX_ADAPTERS) -> Manifest:
    """`previous` with `candidate` (the version a gated rollout is trying, at its weight). An inactive entry of the
    candidate's version (an earlier deployment still loaded) leaves `adapters`, as a version is loaded once; the
    oldest inactive entries retire so that adapters and candidate together stay within the engine's slots. The
    active adapter is never the candidate's version (a rollout of the live content is not gated)."""
    old = previous or Manifest(base_model=base_model)
    if candidate.version == old.active_version:
        raise ValueError(f"{candidate.version} is the active version: it cannot also be the candidate")
    adapters = {name: e for name, e in old.adapters.items() if e.version != candidate.version}
    _retire_oldest(adapters, {old.active}, max_adapters - 1)
    return replace(old, adapters=adapters, candidate=candidate, base_model=old.base_model or base_model,
                   updated_at=now.isoformat())
