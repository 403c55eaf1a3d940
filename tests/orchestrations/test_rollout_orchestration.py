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
from activities.records import TERMINAL
from activities.replica_reports import replica_verdict
from devhost.executor import replay_episodes
from devhost.host import DevHost
from orchestrations.health_gate import bp as health_gate
from orchestrations.reconcile import bp as reconciling
from orchestrations.rollout import bp as rollouts

SHA = "a" * 64
TIMING = {"poll_interval_s": 0.05, "hot_swap_timeout_s": 0.3, "restart_timeout_s": 1.0, "verify_attempts": 2,
          "heal_interval_s": 60.0, "retry_base_s": 0.2}
REPLICA = "app--1-0"
PREVIOUS = {"adapters": {"old": {"path": "adapters/old/" + "b" * 64, "sha256": "b" * 64, "version": "old@bbbbbbbbbbbb"}},
            "active": "old", "alias": "live", "base_model": "tiny", "updated_at": None, "schema": 1,
            "candidate": None}


@dataclass
class Scenario:
    """What the stand-in activities answer, and what they saw."""

    validate: dict[str, Any] = field(default_factory=lambda: {"ok": True, "sha256": SHA, "base_model": "tiny"})
    manifest: dict[str, Any] | None = None
    hot_swap_works: bool = True
    smoke_ok: bool = True
    smoke_down: bool = False  # the smoke chat finds the server down (connection refused), not a bad answer
    refused: str | None = None  # the engine's load error for the new version
    stuck_on_new: bool = False  # once the new version was written, the endpoint serves it whatever happens
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment records by id
    flaky: dict[str, int] = field(default_factory=dict)  # activity -> failures before success
    calls: list[str] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    restarted: bool = False
    replica_checks_before_report: int | None = 0  # replica checks before the listed replica reports (None: never)
    replica_refuses: str | None = None  # the listed replica's load error for the new version
    replica_checks: int = 0

    def replica_answer(self, version: str, check: dict[str, Any]) -> dict[str, Any]:
        """The real rule over one listed replica whose report follows the scenario."""
        self.replica_checks += 1
        waits = self.replica_checks_before_report
        reported = waits is not None and self.replica_checks > waits
        errors = {"new": {"version": version, "sha256": SHA, "reason": self.replica_refuses}} if self.replica_refuses else {}
        report = {"replica_id": REPLICA, "alias_version": version if reported else "old@bbbbbbbbbbbb",
                  "manifest_updated_at": check["manifest_updated_at"], "converged": True, "stale": False,
                  "load_errors": errors}
        return replica_verdict([REPLICA], [report, {**report, "replica_id": "gone-replica"}], version,
                               check["manifest_updated_at"]).to_dict()

    def served_version(self) -> str | None:
        m = self.manifest
        if not m or not m.get("active"):
            return None
        if self.stuck_on_new and any(w and w.get("active") == "new" for w in self.writes):
            return "new@" + SHA[:12]
        if self.refused and m["active"] == "new":
            return PREVIOUS["adapters"]["old"]["version"]
        if self.hot_swap_works or self.restarted:
            return m["adapters"][m["active"]]["version"]
        return PREVIOUS["adapters"]["old"]["version"]

    def add_record(self, record_id: str, adapter: str = "new", sha256: str = SHA, source: str = "upload") -> None:
        self.records[record_id] = {"id": record_id, "app": "app", "adapter": adapter, "sha256": sha256,
                                   "source": source, "accepted_at": record_id.split(".", 1)[1], "stage": "received",
                                   "history": [{"stage": "received", "at": "2026-01-01T00:00:00+00:00"}],
                                   "attempts": 0}


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

    @bp.activity_trigger(input_name="payload", activity=Activity.READ_POLICY)
    def read_policy(payload: dict) -> dict:
        record("read_policy")
        return {"ok": True, "policy": None, "source": "none"}

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
        refused = s.refused if payload.get("expect_version") == "new@" + SHA[:12] else None
        if payload["smoke"] and s.smoke_down:
            return {"ready": False, "served_version": None, "reply": None, "refused": None, "bad_answer": False,
                    "error": "GET /ready failed: ConnectionError: connection refused"}
        answer = {"ready": True, "served_version": version, "reply": None if smoke_failed else "hi",
                  "error": "smoke chat answered 400: no such adapter" if smoke_failed else None, "refused": refused,
                  "bad_answer": smoke_failed}
        if payload.get("replicas") is not None and version == payload["expect_version"]:
            answer["replicas"] = s.replica_answer(version, payload["replicas"])
            if answer["replicas"]["state"] == "refused":
                answer["refused"] = f"{answer['replicas']['why']} (replica {answer['replicas']['replica']})"
        return answer

    @bp.activity_trigger(input_name="payload", activity=Activity.INGEST_RECORDS)
    def ingest_records(payload: dict) -> list[dict]:
        record("ingest_records")
        open_records = [r for r in s.records.values() if r["stage"] not in TERMINAL]
        return sorted(open_records, key=lambda r: r["accepted_at"])

    @bp.activity_trigger(input_name="payload", activity=Activity.UPDATE_RECORD)
    def update_record(payload: dict) -> dict:
        record("update_record")
        found = s.records[payload["id"]]
        if found["stage"] not in TERMINAL:
            found.update(payload["changes"])
        return found

    @bp.activity_trigger(input_name="payload", activity=Activity.HEAL_APP)
    def heal_app(payload: dict) -> dict:
        record("heal_app")
        return {"ok": True, "action": "none"}

    app = df.DFApp()
    for blueprint in (rollouts, reconciling, health_gate, bp):
        app.register_functions(blueprint)
    return app


@pytest.fixture
async def run_rollout(tmp_path) -> AsyncIterator[Any]:
    """Run one rollout on a fresh devhost; returns (output, record, host)."""
    hosts: list[DevHost] = []

    async def run(scenario: Scenario, force_restart: bool = False, baseline: dict | None = None
                  ) -> tuple[dict, DevHost]:
        host = DevHost(stand_in_app(scenario), state_dir=tmp_path / f"state{len(hosts)}", port=0)
        hosts.append(host)
        await host.start()
        request = {"deployment_id": "app.1", "app": "app", "adapter": "new", "sha256": SHA,
                   "force_restart": force_restart, "timing": TIMING, "baseline": baseline}
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
    assert out["stage"] == "rolled_back" and "smoke chat answered 400" in out["reason"] and out["cause"] == "content"
    assert s.writes[-1] == PREVIOUS and s.manifest["active"] == "old"


async def test_server_down_during_the_smoke_chat_is_transient(run_rollout) -> None:
    """The server dies during the smoke chat: rolled back, but as a transient failure (retried), not the content's."""
    s = Scenario(manifest=PREVIOUS, smoke_down=True)
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and out["cause"] == "transient" and "ConnectionError" in out["reason"]
    assert s.writes[-1] == PREVIOUS


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


async def test_failed_manifest_read_writes_nothing(run_rollout) -> None:
    """The manifest read fails past its retries while activating: the rollout fails (transient) and writes no
    manifest at all; it never invents an empty one."""
    s = Scenario(manifest=PREVIOUS, flaky={"read_manifest": 4})  # IO_RETRY makes 4 attempts
    out, _ = await run_rollout(s)
    assert out["stage"] == "failed" and out["cause"] == "transient" and "read_manifest" in out["reason"]
    assert s.writes == [] and s.manifest == PREVIOUS


async def test_refused_adapter_rolls_back_without_a_restart(run_rollout) -> None:
    """The engine refuses the new version: the gate sees it at once, restores the manifest, no restart."""
    s = Scenario(manifest=PREVIOUS, refused="base model mismatch: tiny-llama/ != tiny-llama")
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and out["cause"] == "content" and "tiny-llama/" in out["reason"]
    assert "restart_app" not in s.calls and s.manifest == PREVIOUS


async def test_rollback_of_a_first_deploy_removes_the_manifest(run_rollout) -> None:
    """With no manifest before, a failed gate restores exactly that: no manifest (not an empty one)."""
    s = Scenario(manifest=None, smoke_ok=False)
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and s.writes[-1] is None and s.manifest is None


async def test_probe_failing_after_the_write_still_rolls_back(run_rollout) -> None:
    """The health gate's probe keeps failing past its retries after the manifest was written: the rollout does not
    crash with the new manifest in place, it restores the previous one."""
    s = Scenario(manifest=PREVIOUS, flaky={"probe_endpoint": 4})
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and out["cause"] == "transient" and "health gate" in out["reason"], out
    assert s.manifest == PREVIOUS and s.writes[-1] == PREVIOUS


async def test_unconfirmed_rollback_fails_and_names_the_manifest_to_restore(run_rollout) -> None:
    """The endpoint keeps serving the new version after the restore and a restart: the rollout ends `failed`
    (not `rolled_back`) and hands back the manifest it could not restore, for the next attempt."""
    s = Scenario(manifest=PREVIOUS, smoke_ok=False, stuck_on_new=True)
    out, _ = await run_rollout(s)
    assert out["stage"] == "failed" and "rollback failed" in out["reason"], out
    assert out["unrestored"] == {"manifest": PREVIOUS} and "restart_app" in s.calls


async def test_a_retry_restores_the_baseline_not_the_unverified_manifest(run_rollout) -> None:
    """An attempt given a baseline (what an earlier attempt could not restore) rolls back to the baseline, even
    though the manifest it reads now is the unverified one."""
    s = Scenario(manifest={**PREVIOUS, "active": "new"}, smoke_ok=False)
    out, _ = await run_rollout(s, baseline={"manifest": PREVIOUS})
    assert out["stage"] == "rolled_back" and s.writes[-1] == PREVIOUS and "read_manifest" not in s.calls


async def _reconcile_until(host: DevHost, s: Scenario, done, timeout: float = 20.0) -> None:
    import asyncio

    if host.store.get("reconcile-app") is None:
        host.worker.start_new("reconcile", "reconcile-app", json.dumps({"app": "app", "timing": TIMING}))
    for _ in range(int(timeout / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"reconciler never got there: {s.records}")


@pytest.fixture
async def host_for(tmp_path) -> AsyncIterator[Any]:
    hosts: list[DevHost] = []

    async def start(s: Scenario) -> DevHost:
        host = DevHost(stand_in_app(s), state_dir=tmp_path / f"state{len(hosts)}", port=0)
        hosts.append(host)
        await host.start()
        return host

    yield start
    for host in hosts:
        await host.stop()


async def test_newest_record_wins_and_older_ones_are_superseded(host_for) -> None:
    """Three open records: the newest is rolled out and ends live; the two older end `superseded` naming it."""
    s = Scenario(manifest=PREVIOUS)
    for stamp in ("20260101T000001000000-u1", "20260101T000002000000-r2", "20260101T000003000000-u3"):
        s.add_record(f"app.{stamp}")
    host = await host_for(s)
    await _reconcile_until(host, s, lambda: all(r["stage"] in TERMINAL for r in s.records.values()))
    stages = {k: r["stage"] for k, r in s.records.items()}
    newest = "app.20260101T000003000000-u3"
    assert stages == {"app.20260101T000001000000-u1": "superseded", "app.20260101T000002000000-r2": "superseded",
                      newest: "live"}
    assert all(r["superseded_by"] == newest for k, r in s.records.items() if k != newest)
    assert s.calls.count("validate_adapter") == 1


async def test_upload_of_live_content_ends_live_without_a_rollout(host_for) -> None:
    """An upload of exactly the served content is live already: its record ends `live`, no rollout runs."""
    s = Scenario(manifest=PREVIOUS)
    s.add_record("app.20260101T000001000000-u1", adapter="old", sha256="b" * 64)
    host = await host_for(s)
    await _reconcile_until(host, s, lambda: s.records["app.20260101T000001000000-u1"]["stage"] == "live")
    assert "validate_adapter" not in s.calls and "already live" in s.records["app.20260101T000001000000-u1"]["reason"]


async def test_transient_failure_is_retried_then_goes_live(host_for) -> None:
    """Staging fails past its retries (storage down): the record waits `retrying`, is rolled out again, ends live."""
    s = Scenario(manifest=PREVIOUS, flaky={"stage_adapter": 4})
    s.add_record("app.20260101T000001000000-u1")
    host = await host_for(s)
    seen: list[str] = []
    await _reconcile_until(host, s, lambda: seen.append(s.records["app.20260101T000001000000-u1"]["stage"])
                           or seen[-1] == "live")
    assert "retrying" in seen and s.records["app.20260101T000001000000-u1"]["attempts"] == 2


async def test_content_replaced_by_a_newer_upload_ends_superseded(host_for) -> None:
    """The upload's content changed before its rollout validated it (a newer upload of the same name): the
    record ends `superseded`, not `failed` for its content."""
    s = Scenario(manifest=PREVIOUS, validate={"ok": True, "sha256": "c" * 64, "base_model": "tiny"})
    s.add_record("app.20260101T000001000000-u1")
    host = await host_for(s)
    await _reconcile_until(host, s, lambda: s.records["app.20260101T000001000000-u1"]["stage"] in TERMINAL)
    record = s.records["app.20260101T000001000000-u1"]
    assert record["stage"] == "superseded" and "newer upload" in record["reason"], record
    assert s.writes == []


async def test_content_failure_is_final_but_a_new_upload_tries_again(host_for) -> None:
    """A validation failure ends the record `failed` (cause content) and is not retried; a later record of the
    same content is rolled out again."""
    import asyncio

    bad = {"ok": False, "code": "rank_too_large", "reason": "rank_too_large: r=64", "cause": "content"}
    s = Scenario(manifest=PREVIOUS, validate=bad)
    s.add_record("app.20260101T000001000000-u1")
    host = await host_for(s)
    await _reconcile_until(host, s, lambda: s.records["app.20260101T000001000000-u1"]["stage"] == "failed")
    assert s.records["app.20260101T000001000000-u1"]["cause"] == "content"
    host.worker.raise_event("reconcile-app", "wake", json.dumps({"reason": "test"}))
    await asyncio.sleep(0.5)
    assert s.calls.count("validate_adapter") == 1
    s.validate = {"ok": True, "sha256": SHA, "base_model": "tiny"}
    s.add_record("app.20260101T000009000000-u2")
    host.worker.raise_event("reconcile-app", "wake", json.dumps({"reason": "test"}))
    await _reconcile_until(host, s, lambda: s.records["app.20260101T000009000000-u2"]["stage"] == "live")


async def test_reconciler_rolls_out_once_then_idles(tmp_path) -> None:
    """The reconciler runs one rollout for new desired content, then idles: the same content is not redeployed."""
    import asyncio

    s = Scenario(manifest=PREVIOUS)
    s.add_record("app.20260101T000001000000-u1")
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
        assert s.calls.count("validate_adapter") == 1 and s.calls.count("ingest_records") >= 3
    finally:
        await host.stop()


async def test_reconciler_survives_storage_failures(tmp_path) -> None:
    """When reading the desired state keeps failing after retries, the reconciler reports the error and waits;
    the next wake-up rolls out as usual (it never dies, so no event is lost for good)."""
    import asyncio

    s = Scenario(manifest=PREVIOUS, flaky={"ingest_records": 4})  # IO_RETRY makes 4 attempts
    s.add_record("app.20260101T000001000000-u1")
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
        assert first["phase"] == "error" and "transient fault in ingest_records" in first["reason"]
        assert host.store.get("reconcile-app").status not in ("Failed", "Completed")
        host.worker.raise_event("reconcile-app", "wake", json.dumps({"reason": "test"}))
        second = await phase("idle")
        assert second["phase"] == "idle" and s.manifest["active"] == "new"
    finally:
        await host.stop()


async def test_live_only_when_the_listed_replica_reports_the_version(run_rollout) -> None:
    """The smoke chat passes before the replica reports: the gate probes on until it does; its figures are in
    the record and an unlisted replica's report is not."""
    s = Scenario(manifest=PREVIOUS, replica_checks_before_report=2)
    out, _ = await run_rollout(s)
    assert out["stage"] == "live", out["reason"]
    assert s.replica_checks == 3
    assert out["replicas"] == {REPLICA: {"reported": True, "alias_version": "new@" + SHA[:12], "converged": True,
                                         "stale": False, "heartbeat_age_s": None, "counted": True,
                                         "manifest_updated_at": s.manifest["updated_at"]}}


async def test_a_replica_that_never_reports_the_version_is_not_live(run_rollout) -> None:
    """A listed replica that never reports the new version: not live within the gate's timeout (transient), and
    the previous manifest is restored."""
    s = Scenario(manifest=PREVIOUS, replica_checks_before_report=None)
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and out["cause"] == "transient"
    assert f"not every replica serves new@{SHA[:12]}: {REPLICA}: serves 'old@bbbbbbbbbbbb'" in out["reason"]
    assert out["replicas"][REPLICA]["counted"] is False and s.manifest == PREVIOUS
    assert s.replica_checks > 1


async def test_a_replica_refusing_the_version_rolls_back_as_content(run_rollout) -> None:
    """A listed replica's engine refuses the new version: rolled back at once, cause content, with the replica
    and the engine's reason."""
    s = Scenario(manifest=PREVIOUS, replica_refuses="rank 64 exceeds max_lora_rank 16")
    out, _ = await run_rollout(s)
    assert out["stage"] == "rolled_back" and out["cause"] == "content"
    assert out["reason"] == ("the inference engine refused the adapter: rank 64 exceeds max_lora_rank 16 "
                             f"(replica {REPLICA})")
    assert s.replica_checks == 1 and "restart_app" not in s.calls and s.manifest == PREVIOUS
