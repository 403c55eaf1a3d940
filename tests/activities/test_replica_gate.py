"""The gate's replica rule (`replica_verdict`) over reports as servers write them, and the probe activity that
applies it to the platform's listed replicas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from activities import functions
from activities.adapter_store import LocalFolderTarget
from activities.platform.base import AppState, TransientPlatformError
from activities.replica_reports import observe, replica_verdict
from inference_image.inference_server.replica_state import REPLICA_DIR, ReplicaReporter, build_report
from tests.activities.test_activity_functions import _Replicas

NEW, OLD = "beta@a8d597e4eabe", "alpha@0c1d2e3f4a5b"
WRITTEN = "2026-11-30T14:14:11.402+00:00"  # the manifest's updated_at the rollout wrote
NOW = datetime(2026, 11, 30, 14, 14, 20, tzinfo=UTC)


def observed(replica: str, *, version: str = NEW, manifest: str | None = WRITTEN, converged: bool = True,
             age_s: float = 1.0, refused: str | None = None, sync_interval_s: float = 10.0) -> dict[str, Any]:
    """A `replicas_observed` entry for a report as a server builds it, `age_s` after its heartbeat."""
    errors = {"beta": {"version": NEW, "sha256": "a8d5", "reason": refused}} if refused else {}
    report = build_report(replica, 0.0, sync_interval_s, {
        "alias": "live", "alias_target": version.split("@")[0], "alias_version": version, "alias_unavailable": None,
        "adapters": {version.split("@")[0]: {"version": version, "sha256": "x"}}, "load_errors": errors,
        "manifest_updated_at": manifest, "converged": converged, "engine_ready": True, "draining": False,
        "last_sync_error": refused})
    report["heartbeat_at"] = (NOW - timedelta(seconds=age_s)).isoformat()
    return observe(f"{replica}.json", json.dumps(report).encode(), NOW)


def verdict(listed: list[str], reports: list[dict[str, Any]]) -> dict[str, Any]:
    return replica_verdict(listed, reports, NEW, WRITTEN).to_dict()


def test_ready_when_every_listed_replica_reports_the_version() -> None:
    out = verdict(["r-b", "r-a"], [observed("r-a"), observed("r-b")])
    assert out["state"] == "ready" and out["why"] is None
    assert out["replicas"]["r-a"] == {"reported": True, "alias_version": NEW, "manifest_updated_at": WRITTEN,
                                      "converged": True, "stale": False, "heartbeat_age_s": 1.0, "counted": True}
    assert list(out["replicas"]) == ["r-a", "r-b"]


def test_reports_of_unlisted_replicas_are_ignored() -> None:
    """A replica the platform no longer lists (scaled in, an old revision) neither blocks nor refuses."""
    reports = [observed("r-a"), observed("gone", version=OLD, age_s=300), observed("old", refused="bad rank")]
    out = verdict(["r-a"], reports)
    assert out["state"] == "ready" and set(out["replicas"]) == {"r-a"}


@pytest.mark.parametrize(("report", "why"), [
    (None, "r-b: no report"),
    (observed("r-b", age_s=31), "r-b: stale report (heartbeat 31.0 s ago)"),
    (observed("r-b", manifest="2026-11-30T14:00:00+00:00"),
     f"r-b: has not read the manifest of {WRITTEN} (read 2026-11-30T14:00:00+00:00)"),
    (observed("r-b", version=OLD), f"r-b: serves {OLD!r}"),
    (observed("r-b", converged=False), f"r-b: serves {NEW!r}, not converged"),
])
def test_waiting_while_a_listed_replica_has_not_shown_the_version(report: dict | None, why: str) -> None:
    reports = [observed("r-a")] + ([report] if report else [])
    out = verdict(["r-a", "r-b"], reports)
    assert (out["state"], out["why"]) == ("waiting", why)
    assert out["replicas"]["r-a"]["counted"] and not out["replicas"]["r-b"]["counted"]


def test_the_stale_rule_is_the_replicas_own() -> None:
    """Stale after max(3 x its sync interval, 30 s): a 10 s-interval replica 31 s late is stale, a 20 s one not."""
    assert verdict(["r-a"], [observed("r-a", age_s=31)])["state"] == "waiting"
    assert verdict(["r-a"], [observed("r-a", age_s=31, sync_interval_s=20.0)])["state"] == "ready"


def test_a_damaged_report_and_no_listed_replica_are_waiting() -> None:
    damaged = observe("r-a.json", b"{not json", NOW)
    out = verdict(["r-a"], [damaged])
    assert out["state"] == "waiting" and out["why"].startswith("r-a: damaged report: not valid JSON")
    assert out["replicas"]["r-a"]["damaged"]
    assert verdict([], [observed("r-a")]) == {"state": "waiting", "why": "the platform lists no running replica",
                                             "replica": None, "replicas": {}}


def test_a_fresh_load_error_for_the_version_refuses_it() -> None:
    """A listed replica's engine refusing the candidate refuses it, whatever the others say; a stale report's
    error (an old replica's) and an error for another version do not."""
    out = verdict(["r-a", "r-b"], [observed("r-b", version=OLD, refused="rank 64 > 16")])
    assert (out["state"], out["why"], out["replica"]) == ("refused", "rank 64 > 16", "r-b")
    assert out["replicas"]["r-b"]["refused"] == "rank 64 > 16"
    assert verdict(["r-b"], [observed("r-b", version=OLD, age_s=60, refused="rank 64 > 16")])["state"] == "waiting"
    other = replica_verdict(["r-b"], [observed("r-b", version=OLD, refused="x")], "gamma@000000000000", WRITTEN)
    assert other.state == "waiting"


# --- the probe activity ---------------------------------------------------------------------------------------


def probe_with_replicas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listed: Any, versions: list[str]
                        ) -> dict[str, Any]:
    """The probe activity against a stand-in endpoint, reports in a local store, `listed` from the platform."""
    endpoint = _Replicas(versions)
    try:
        apps = SimpleNamespace(describe=lambda app: AppState(app, True, endpoint=endpoint.url, replicas=1),
                               list_replicas=listed)
        svc = SimpleNamespace(apps=apps, settings=SimpleNamespace(inference_api_key="k"), alias="live",
                              target=LocalFolderTarget(tmp_path))
        monkeypatch.setattr(functions, "services", lambda: svc)
        payload = {"app": "demo", "expect_version": NEW, "smoke": False, "replicas": {"manifest_updated_at": WRITTEN}}
        return functions.probe_endpoint.build().get_user_function()(payload)
    finally:
        endpoint.server.shutdown()


def write_report(tmp_path: Path, replica: str, version: str, load_errors: dict | None = None) -> None:
    """A report written by the server's own reporter."""
    reporter = ReplicaReporter(tmp_path / "demo" / REPLICA_DIR, replica, 0.5)
    (tmp_path / "demo").mkdir(exist_ok=True)
    assert reporter.write({"alias": "live", "alias_target": "beta", "alias_version": version,
                           "alias_unavailable": None, "adapters": {}, "load_errors": load_errors or {},
                           "manifest_updated_at": WRITTEN, "converged": True, "engine_ready": True,
                           "draining": False, "last_sync_error": None})


def test_probe_adds_the_replica_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_report(tmp_path, "demo--1-0", NEW)
    out = probe_with_replicas(monkeypatch, tmp_path, lambda app: ["demo--1-0"], [NEW])
    assert out["ready"] and out["replicas"]["state"] == "ready" and out["refused"] is None
    out = probe_with_replicas(monkeypatch, tmp_path, lambda app: ["demo--1-0", "demo--1-1"], [NEW])
    assert out["ready"] and out["replicas"]["state"] == "waiting" and out["replicas"]["why"] == "demo--1-1: no report"


def test_probe_sets_refused_for_a_replicas_load_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As `/ready`'s load errors do: `refused` names the engine's reason and the replica."""
    write_report(tmp_path, "demo--1-0", OLD, {"beta": {"version": NEW, "sha256": "a8", "reason": "rank 64 > 16"}})
    out = probe_with_replicas(monkeypatch, tmp_path, lambda app: ["demo--1-0"], [NEW])
    assert out["refused"] == "rank 64 > 16 (replica demo--1-0)" and out["replicas"]["state"] == "refused"


def test_probe_waits_when_the_platform_cannot_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing(app: str) -> list[str]:
        raise TransientPlatformError("list replicas: (429) throttled")

    out = probe_with_replicas(monkeypatch, tmp_path, failing, [NEW])
    assert out["replicas"]["state"] == "waiting" and "throttled" in out["replicas"]["why"]


def test_probe_checks_no_replica_while_the_endpoint_is_not_ready(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    def never(app: str) -> list[str]:
        raise AssertionError("listed although the endpoint serves another version")

    out = probe_with_replicas(monkeypatch, tmp_path, never, [OLD])
    assert not out["ready"] and "replicas" not in out
