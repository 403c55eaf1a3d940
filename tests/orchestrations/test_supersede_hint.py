"""The starters' hint to a waiting rollout: a newer deployment tells the rollout the reconciler runs to give way,
only when it waits in a stage that takes decisions (the heal timer hints too: an upload whose event was lost)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import azure.durable_functions as df
import pytest

from orchestrations import starters
from orchestrations.progressive import ACTION_EVENT

RUNNING = df.OrchestrationRuntimeStatus.Running


class Client:
    """A Durable client stand-in: statuses by instance id; the events raised."""

    def __init__(self, statuses: dict[str, Any]) -> None:
        self.statuses = statuses
        self.raised: list[tuple[str, str, dict]] = []

    async def get_status(self, instance_id: str) -> Any:
        return self.statuses.get(instance_id)

    async def raise_event(self, instance_id: str, name: str, data: dict) -> None:
        self.raised.append((instance_id, name, data))


def client_with(rollout_stage: str | None, phase: str = "rolling_out") -> Client:
    reconciler = SimpleNamespace(runtime_status=RUNNING,
                                 custom_status={"phase": phase, "instance_id": "app.1", "deployment_id": "app.1"})
    rollout = SimpleNamespace(runtime_status=RUNNING, custom_status={"stage": rollout_stage})
    return Client({starters.reconcile_instance_id("app"): reconciler, "app.1": rollout})


@pytest.mark.parametrize("stage", ["canary", "awaiting_approval"])
async def test_a_newer_deployment_hints_a_waiting_rollout(stage: str) -> None:
    client = client_with(stage)
    await starters.wake_reconciler(client, "app", "upload beta", newer=True)
    assert (("app.1", ACTION_EVENT, {"action": "supersede", "by": "upload beta"}) in client.raised)


@pytest.mark.parametrize(("stage", "phase", "newer"), [
    ("evaluating", "rolling_out", True),  # not waiting: it ends by itself within the evaluation's deadline
    ("canary", "idle", True),  # the reconciler runs no rollout
    ("canary", "rolling_out", False),  # a wake that brings no new deployment
])
async def test_no_hint_otherwise(stage: str, phase: str, newer: bool) -> None:
    client = client_with(stage, phase)
    await starters.wake_reconciler(client, "app", "heal timer", newer=newer)
    assert [e for e in client.raised if e[1] == ACTION_EVENT] == []
