"""The rollout and reconcile orchestrators on devhost (the SDK's real replay), with stand-in activities
registered under the real activity names: gates, fallback to restart, rollback, retries, determinism."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import azure.durable_functions as df
import pytest

from activities.catalog import Activity
from devhost.executor import replay_episodes
from devhost.host import DevHost
from orchestrations.reconcile import bp as reconciling
from orchestrations.rollout import bp as rollouts

SHA = "a" * 64
TIMING = {"poll_interval_s": 0.05, "hot_swap_timeout_s": 0.3, "restart_timeout_s": 1.0, "verify_attempts": 2,
          "heal_interval_s": 60.0}
PREVIOUS = {"adapters": {"old": {"path": "adapters/old/" + "b" * 64, "sha256": "b" * 64, "version": "old@bbbbbbbbbbbb"}},
            "active": "old", "alias": "live", "base_model": "tiny", "updated_at": None, "schema": 1}


@dataclass
class Scenario:
    """What the stand-in activities answer, and what they saw."""

    validate: dict[str, Any] = field(default_factory=lambda: {"ok": True, "sha256": SHA, "base_model": "tiny"})
    manifest: dict[str, Any] | None = None
    hot_swap_works: bool = True
    smoke_ok: bool = True
    flaky: dict[str, int] = field(default_factory=dict)  # activity -> failures before success
    calls: list[str] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    restarted: bool = False

    def served_version(self) -> str | None:
        m = self.manifest
        if not m or not m.get("active"):
            return None
        if self.hot_swap_works or self.restarted:
            return m["adapters"][m["active"]]["version"]
        return PREVIOUS["adapters"]["old"]["version"]


def stand_in_app(s: Scenario) -> df.DFApp:
    """Our orchestrators plus stand-ins under the activity names, all reading `s`."""
    bp = df.Blueprint()

    def record(name: str) -> None:
        s.calls.append(name)
        if s.flaky.get(name, 0) > 0:
            s.flaky[name] -= 1
            raise RuntimeError(f"transient fault in {name}")

    @bp.activity_trigger(input_name="payload", activity=Activity.VALIDATE_ADAPTER)
    def validate_adapter(payload: dict) -> dict:
        record("validate_adapter")
        return s.validate

    @bp.activity_trigger(input_name="payload", activity=Activity.STAGE_ADAPTER)
    def stage_adapter(payload: dict) -> dict:
        record("stage_adapter")
        return {"ok": True, "path": f"adapters/{payload['adapter']}/{payload['sha256']}"}

    @bp.activity_trigger(input_name="payload", activity=Activity.ENSURE_APP)
    def ensure_app(payload: dict) -> dict:
        record("ensure_app")
        return {"ok": True, "changed": False, "endpoint": "http://127.0.0.1:1"}

    @bp.activity_trigger(input_name="payload", activity=Activity.READ_MANIFEST)
    def read_manifest(payload: dict) -> dict | None:
        record("read_manifest")
        return s.manifest

    @bp.activity_trigger(input_name="payload", activity=Activity.WRITE_MANIFEST)
    def write_manifest(payload: dict) -> dict:
        record("write_manifest")
        s.writes.append(payload["manifest"])
        s.manifest = payload["manifest"]
        return {"ok": True}

    @bp.activity_trigger(input_name="payload", activity=Activity.RESTART_APP)
    def restart_app(payload: dict) -> dict:
        record("restart_app")
        s.restarted = True
        return {"ok": True, "revision": "app--2"}

    @bp.activity_trigger(input_name="payload", activity=Activity.PROBE_ENDPOINT)
    def probe_endpoint(payload: dict) -> dict:
        record("probe_endpoint")
        version = s.served_version()
        smoke_failed = payload["smoke"] and not s.smoke_ok
        return {"ready": True, "served_version": version, "reply": None if smoke_failed else "hi",
                "error": "smoke chat answered 500" if smoke_failed else None}

    @bp.activity_trigger(input_name="payload", activity=Activity.RESOLVE_DESIRED)
    def resolve_desired(payload: dict) -> dict | None:
        record("resolve_desired")
        return {"adapter": "new", "sha256": SHA, "accepted_at": "2026-01-01T00:00:00+00:00"}

    app = df.DFApp()
    for blueprint in (rollouts, reconciling, bp):
        app.register_functions(blueprint)
    return app


@pytest.fixture
async def run_rollout(tmp_path) -> AsyncIterator[Any]:
    """Run one rollout on a fresh devhost; returns (output, record, host)."""
    hosts: list[DevHost] = []

    async def run(scenario: Scenario, force_restart: bool = False) -> tuple[dict, DevHost]:
        host = DevHost(stand_in_app(scenario), state_dir=tmp_path / f"state{len(hosts)}", port=0)
        hosts.append(host)
        await host.start()
        request = {"deployment_id": "app.1", "app": "app", "adapter": "new", "sha256": SHA,
                   "force_restart": force_restart, "timing": TIMING}
        host.worker.start_new("rollout", "app.1", json.dumps(request))
        record = await host.worker.wait_for("app.1", timeout=60)
        return json.loads(record.output_json), host

    yield run
    for host in hosts:
        await host.stop()


async def test_happy_path_hot_swaps_to_live(run_rollout) -> None:
    """Valid adapter, hot swap converges, smoke chat passes: live, no restart, manifest active on the new one."""
    s = Scenario(manifest=PREVIOUS)
    out, _ = await run_rollout(s)
    assert out["stage"] == "live" and out["activation"] == "hot_swap"
    assert [h["stage"] for h in out["history"]][-3:] == ["activating", "verifying", "live"]
    assert "restart_app" not in s.calls
    assert s.manifest["active"] == "new" and set(s.manifest["adapters"]) == {"old", "new"}


async def test_hot_swap_that_does_not_converge_falls_back_to_restart(run_rollout) -> None:
    """When replicas never report the new version, the rollout restarts the app and then goes live."""
    s = Scenario(manifest=PREVIOUS, hot_swap_works=False)
    out, _ = await run_rollout(s)
    assert out["stage"] == "live" and out["activation"] == "restart" and s.restarted


async def test_force_restart_skips_the_hot_swap(run_rollout) -> None:
    """force_restart goes straight to a restart."""
    s = Scenario(manifest=PREVIOUS)
    out, _ = await run_rollout(s, force_restart=True)
    assert out["stage"] == "live" and out["activation"] == "restart"
    assert s.calls.index("restart_app") < s.calls.index("probe_endpoint")


async def test_failed_smoke_chat_rolls_back_to_the_previous_manifest(run_rollout) -> None:
    """A failing health gate restores the previous manifest and ends rolled_back with the reason."""
    s = Scenario(manifest=PREVIOUS, smoke_ok=False)
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and "smoke chat answered 500" in out["reason"]
    assert s.writes[-1] == PREVIOUS and s.manifest["active"] == "old"


async def test_invalid_adapter_fails_without_touching_the_manifest(run_rollout) -> None:
    """A validation failure ends failed with its reason, before staging, and writes nothing."""
    s = Scenario(manifest=PREVIOUS, validate={"ok": False, "code": "rank_too_large", "reason": "rank_too_large: r=64"})
    out, _ = await run_rollout(s)
    assert out["stage"] == "failed" and out["reason"] == "rank_too_large: r=64"
    assert s.writes == [] and "stage_adapter" not in s.calls


async def test_transient_faults_are_retried(run_rollout) -> None:
    """An activity failing twice with a transient fault is retried by the policy and the rollout goes live."""
    s = Scenario(manifest=None, flaky={"stage_adapter": 2})
    out, _ = await run_rollout(s)
    assert out["stage"] == "live" and s.calls.count("stage_adapter") == 3


async def test_same_history_replays_to_the_same_actions(run_rollout) -> None:
    """Replaying a finished rollout's stored history twice gives identical actions in every episode."""
    s = Scenario(manifest=PREVIOUS, smoke_ok=False)
    out, host = await run_rollout(s)
    record = host.store.get("app.1")
    events = host.store.history("app.1")
    first = replay_episodes(host.functions, "rollout", "app.1", record.input_json, events)
    second = replay_episodes(host.functions, "rollout", "app.1", record.input_json, events)
    assert len(first) > 5
    assert [r.actions for r in first] == [r.actions for r in second]
    assert first[-1].is_done and first[-1].output["stage"] == out["stage"]


async def test_reconciler_rolls_out_once_then_idles(tmp_path) -> None:
    """The reconciler runs one rollout for new desired content, then idles: the same content is not redeployed."""
    import asyncio

    s = Scenario(manifest=PREVIOUS)
    host = DevHost(stand_in_app(s), state_dir=tmp_path / "state", port=0)
    await host.start()
    try:
        state = {"app": "app", "timing": TIMING}
        host.worker.start_new("reconcile", "reconcile-app", json.dumps(state))
        for _ in range(200):
            record = host.store.get("reconcile-app")
            custom = json.loads(record.custom_status_json or "null") or {}
            if custom.get("phase") == "idle":
                break
            await asyncio.sleep(0.05)
        assert custom.get("phase") == "idle", custom
        assert s.manifest["active"] == "new"
        assert s.calls.count("validate_adapter") == 1  # one rollout, then idle on equal content
        host.worker.raise_event("reconcile-app", "wake", json.dumps({"reason": "test"}))
        await asyncio.sleep(0.5)
        assert s.calls.count("validate_adapter") == 1 and s.calls.count("resolve_desired") >= 3
    finally:
        await host.stop()


async def test_reconciler_survives_storage_failures(tmp_path) -> None:
    """When reading the desired state keeps failing after retries, the reconciler reports the error and waits;
    the next wake-up rolls out as usual (it never dies, so no event is lost for good)."""
    import asyncio

    s = Scenario(manifest=PREVIOUS, flaky={"resolve_desired": 4})  # IO_RETRY makes 4 attempts
    host = DevHost(stand_in_app(s), state_dir=tmp_path / "state", port=0)
    await host.start()

    async def phase(wanted: str) -> dict:
        for _ in range(300):
            custom = json.loads(host.store.get("reconcile-app").custom_status_json or "null") or {}
            if custom.get("phase") in (wanted, "idle"):
                return custom
            await asyncio.sleep(0.05)
        return custom

    try:
        host.worker.start_new("reconcile", "reconcile-app", json.dumps({"app": "app", "timing": TIMING}))
        first = await phase("error")
        assert first["phase"] == "error" and "transient fault in resolve_desired" in first["reason"]
        assert host.store.get("reconcile-app").status not in ("Failed", "Completed")
        host.worker.raise_event("reconcile-app", "wake", json.dumps({"reason": "test"}))
        second = await phase("idle")
        assert second["phase"] == "idle" and s.manifest["active"] == "new"
    finally:
        await host.stop()
