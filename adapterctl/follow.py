"""Following a rollout (or provision / restart) through the status API until it ends, showing each stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .api import OrchestratorApi

TERMINAL = {"live", "rolled_back", "failed"}
RUNTIME_DONE = {"Completed", "Failed", "Terminated"}


def is_finished(record: dict[str, Any]) -> bool:
    return record.get("stage") in TERMINAL or record.get("runtime_status") in RUNTIME_DONE


def succeeded(record: dict[str, Any]) -> bool:
    if "stage" in record:
        return record["stage"] == "live"
    return record.get("runtime_status") == "Completed" and record.get("state") in ("provisioned", "ready")


def follow(
    api: OrchestratorApi, deployment_id: str, timeout: float, on_stage: Callable[[dict[str, Any]], None],
    interval: float = 0.5,
) -> dict[str, Any]:
    """Poll one deployment until it finishes; `on_stage` sees each stage entry once, in order."""
    shown = 0
    deadline = time.monotonic() + timeout
    while True:
        record = api.deployment(deployment_id)
        history = record.get("history") or []
        for entry in history[shown:]:
            on_stage(entry)
        shown = len(history)
        if is_finished(record):
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployment {deployment_id} still at {record.get('stage')!r} after {timeout:.0f}s")
        time.sleep(interval)


def _started_at(record: dict[str, Any]) -> str:
    """When the rollout started: its `received` stage time (finer than the runtime's created time)."""
    history = record.get("history") or []
    return (history[0].get("at") if history else None) or record.get("created_at") or ""


def find_rollout(
    api: OrchestratorApi, app: str, sha256: str, timeout: float, interval: float = 0.5,
    since: str | None = None, grace: float = 5.0,
) -> dict | None:
    """The rollout of content `sha256` on `app` started at or after `since` (ISO time of the upload); None when
    that content is live already; after `grace` seconds with neither, an earlier rollout of the same content
    (content rejected before is not retried)."""
    started = time.monotonic()
    while True:
        records = [r for r in api.deployments(app) if r.get("sha256") == sha256]
        fresh = [r for r in records if since is None or _started_at(r) >= since]
        if fresh:
            return fresh[0]
        if (api.app(app).get("served") or {}).get("sha256") == sha256:
            return None
        waited = time.monotonic() - started
        if records and waited > grace:
            return records[0]
        if waited > timeout:
            raise TimeoutError(f"no rollout of {sha256[:12]} on {app!r} started within {timeout:.0f}s")
        time.sleep(interval)
