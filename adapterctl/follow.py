"""Following a rollout (or provision / restart) through the status API until it ends, showing each stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from activities.records import TERMINAL

from .api import ApiError, OrchestratorApi

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
    shown: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = api.deployment(deployment_id)
        except ApiError as exc:  # the orchestrator briefly unreachable or busy: keep following until the deadline
            if (exc.status and exc.status < 500) or time.monotonic() > deadline:
                raise
            time.sleep(interval)
            continue
        for entry in record.get("history") or []:  # a retried attempt brings a new history: show what is new
            key = (entry.get("stage"), entry.get("at"))
            if key not in shown:
                shown.add(key)
                on_stage(entry)
        if is_finished(record):
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployment {deployment_id} still at {record.get('stage')!r} after {timeout:.0f}s")
        time.sleep(interval)
