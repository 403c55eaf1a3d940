"""Following a rollout (or provision / restart) through the status API until it ends, showing each stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .api import OrchestratorApi

TERMINAL = {"live", "rolled_back", "failed", "superseded"}
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
