"""Crash test: the host is SIGKILLed while a rollout is `activating`; after a restart every orchestration resumes
from its history, every upload reaches a terminal stage, and nothing is done twice."""

from __future__ import annotations

import time

import pytest

from adapterctl.follow import follow
from tests.e2e.helpers import TIMEOUT, chat, wait_idle
from tinykit import PHRASES

pytestmark = pytest.mark.slow
STAGES = ["received", "validating", "staging", "provisioning", "activating", "verifying", "live"]


def _wait_for_stage(stack, app: str, stage: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for record in stack.api.deployments(app):
            if record.get("stage") == stage:
                return record
            assert record.get("stage") not in ("live", "failed", "rolled_back"), f"missed {stage}: {record}"
        time.sleep(0.05)
    raise TimeoutError(f"no rollout of {app} reached {stage}")


def test_host_killed_while_activating_resumes_to_live(local_stack) -> None:
    """SIGKILL mid-activation, restart: the rollout ends live once, and a queued upload also goes live."""
    kit = local_stack.kit
    marker = local_stack.store.upload_adapter_folder(kit.adapters["alpha"], "crash", "alpha")
    activating = _wait_for_stage(local_stack, "crash", "activating")
    local_stack.store.upload_adapter_folder(kit.adapters["beta"], "crash", "beta")  # arrives while activating
    local_stack.kill_host()
    local_stack.start_host()

    record = follow(local_stack.api, activating["id"], TIMEOUT, lambda _: None, interval=0.1)
    assert record["stage"] == "live", record
    assert [h["stage"] for h in record["history"]] == STAGES  # replayed, not re-entered
    info = wait_idle(local_stack, "crash")
    rollouts = local_stack.api.deployments("crash")
    assert all(r["stage"] in ("live", "failed", "rolled_back", "superseded") for r in rollouts), rollouts
    assert [r["sha256"] for r in rollouts].count(marker.sha256) == 1
    assert info["served"]["adapter"] == "beta"
    assert PHRASES["beta"] in chat(local_stack, "crash")
