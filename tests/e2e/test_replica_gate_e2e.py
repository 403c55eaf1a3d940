"""End to end on the embedded default: a version is live only when every replica the platform lists reports it.

The local platform lists one replica per app process (`<app>--<n>-0`, its report id); the gate counts its report.
A replica whose reports stop reaching the store never shows the candidate: the rollout is not live within the
gate's timeout (`ROLLOUT_HOT_SWAP_TIMEOUT_S`, 20 s in the test stack), the previous version is restored, and the
retry goes live once the replica reports again.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.helpers import TIMEOUT, chat, deploy
from tinykit import PHRASES

pytestmark = pytest.mark.slow


def rollout_output(stack, record: dict[str, Any]) -> dict[str, Any]:
    """The final status of the record's last rollout (the Durable instance's output)."""
    url = f"{stack.url.rstrip('/')}/runtime/webhooks/durabletask/instances/{record['instance_id']}"
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["output"]


def stage_seconds(record: dict[str, Any], start: str, end: str) -> float:
    at = {h["stage"]: datetime.fromisoformat(h["at"]) for h in record["history"]}
    return (at[end] - at[start]).total_seconds()


def test_hot_swap_goes_live_with_every_listed_replica_counted(local_stack) -> None:
    """alpha then beta: each goes live once the app's one replica reports it; the record has its figures."""
    first = deploy(local_stack, "counted", local_stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    second = deploy(local_stack, "counted", local_stack.kit.adapters["beta"])
    assert second["stage"] == "live" and second["activation"] == "hot_swap", second.get("reason")
    replicas = rollout_output(local_stack, second)["replicas"]
    assert second["replicas"] == replicas  # the deployment record carries them (status API, adapterctl)
    assert list(replicas) == ["counted--1-0"]  # one process, revision 1: the hot swap restarted nothing
    figures = replicas["counted--1-0"]
    assert figures["alias_version"] == second["version"] and figures["counted"] is True
    assert figures["converged"] is True and figures["stale"] is False
    observed = {r["replica_id"]: r for r in local_stack.api.app("counted")["replicas_observed"]}
    assert observed["counted--1-0"]["manifest_updated_at"] == figures["manifest_updated_at"]
    assert PHRASES["beta"] in chat(local_stack, "counted")
    print(f"verifying -> live: {stage_seconds(second, 'verifying', 'live'):.3f} s; "
          f"activating -> live: {stage_seconds(second, 'activating', 'live'):.3f} s")


def _silence(folder: Path) -> None:
    """Put a file where the replica writes its reports: its writes fail (it keeps serving), nothing is read."""
    for _ in range(50):
        try:
            shutil.rmtree(folder, ignore_errors=True)
            folder.write_bytes(b"")
            return
        except OSError:  # the replica made the folder again meanwhile
            time.sleep(0.05)
    raise AssertionError(f"could not replace {folder}")


def test_a_replica_that_never_reports_the_candidate_keeps_the_previous_version(local_stack) -> None:
    """The listed replica serves beta but its reports do not reach the store: not live within the gate's timeout
    (cause transient), alpha restored; once it reports again, the retry goes live."""
    app = "mute"
    first = deploy(local_stack, app, local_stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    reports = Path(local_stack.env["ADAPTER_STORE_PATH"]) / app / "_replicas"
    _silence(reports)
    try:
        uploaded = local_stack.store.upload_adapter_folder(local_stack.kit.adapters["beta"], app, "beta")
        deadline = time.monotonic() + TIMEOUT
        record = local_stack.api.deployment(uploaded.deployment_id)
        while record["stage"] not in ("retrying", "live", "rolled_back", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            record = local_stack.api.deployment(uploaded.deployment_id)
        assert record["stage"] == "retrying", record
        assert record["cause"] == "transient"
        assert f"not every replica serves {record['version']}: {app}--1-0: no report" in record["reason"]
        assert [h["stage"] for h in record["history"]][-2:] == ["verifying", "rolled_back"]
        assert stage_seconds(record, "verifying", "rolled_back") >= 20  # the gate's timeout, not sooner
        assert PHRASES["alpha"] in chat(local_stack, app)  # the previous version is served again
    finally:
        reports.unlink(missing_ok=True)
    done = deploy_follow(local_stack, uploaded.deployment_id)
    assert done["stage"] == "live", done.get("reason")
    assert rollout_output(local_stack, done)["replicas"][f"{app}--1-0"]["counted"] is True
    assert PHRASES["beta"] in chat(local_stack, app)


def deploy_follow(stack, record_id: str) -> dict[str, Any]:
    from adapterctl.follow import follow

    return follow(stack.api, record_id, TIMEOUT, lambda _: None, interval=0.1)
