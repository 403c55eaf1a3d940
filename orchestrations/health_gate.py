"""Bounded health gates for orchestrators: probe, sleep on a durable timer, give up after N tries."""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity

from .policies import IO_RETRY


def serves(probe: dict, version: str | None) -> bool:
    """The probe saw a ready endpoint serving `version` (None: the base model)."""
    return bool(probe.get("ready")) and probe.get("served_version") == version


def wait_until_serving(
    context: df.DurableOrchestrationContext, app: str, version: str | None, timeout_s: float, interval_s: float
) -> Generator[Any, Any, dict]:
    """Poll the app's endpoint until it serves `version`; returns the last probe either way."""
    probe: dict = {}
    for _ in range(max(1, int(timeout_s / interval_s))):
        probe = yield context.call_activity_with_retry(
            Activity.PROBE_ENDPOINT, IO_RETRY.options(), {"app": app, "expect_version": version, "smoke": False}
        )
        if serves(probe, version):
            return probe
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=interval_s))
    return probe
