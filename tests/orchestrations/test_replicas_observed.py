"""`replicas_observed` in `GET /api/apps/{app}`: each replica's own report read from the staging target, with the
stale rule applied; a damaged file is an entry saying so, an unreadable folder an error field, never a 500."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from activities.adapter_store import AzureFileShareTarget, LocalFolderTarget, ShareSettings
from activities.replica_reports import replicas_observed
from inference_image.inference_server.replica_state import REPLICA_DIR, ReplicaReporter, build_report, utc_iso
from orchestrations import status_api
from tests.orchestrations.test_app_lifecycle_routes import azurite, call, host, serve, upload  # noqa: F401

OBSERVED = {"alias": "live", "alias_target": "alpha", "alias_version": "alpha@abc", "alias_unavailable": None,
            "adapters": {"alpha": {"version": "alpha@abc", "sha256": "ab" * 32}}, "load_errors": {},
            "manifest_updated_at": "2026-11-30T12:00:00+00:00", "converged": True, "engine_ready": True,
            "draining": False, "last_sync_error": None}
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def write_report(folder: Path, replica: str, heartbeat: datetime, sync_interval_s: float = 0.5) -> None:
    """A report as a replica writes it (`build_report`), its heartbeat set to `heartbeat`."""
    folder.mkdir(parents=True, exist_ok=True)
    report = build_report(replica, heartbeat.timestamp() - 60, sync_interval_s, OBSERVED)
    (folder / f"{replica}.json").write_text(json.dumps({**report, "heartbeat_at": utc_iso(heartbeat.timestamp())}))


def test_local_reports_with_the_stale_rule_and_damage(tmp_path: Path) -> None:
    """Fresh and stale by the replica's own interval (max(3 × interval, 30 s)); damaged files named with the reason;
    temporary and other files skipped; an app without reports has none."""
    target = LocalFolderTarget(tmp_path)
    folder = target.app_root("demo") / REPLICA_DIR
    write_report(folder, "r-fresh", NOW - timedelta(seconds=29))
    write_report(folder, "r-stale", NOW - timedelta(seconds=31))
    write_report(folder, "r-slow", NOW - timedelta(seconds=50), sync_interval_s=20)  # 60 s for it
    (folder / "r-cut.json").write_text('{"schema": 1, "replica_id": "r-cut", "heart')
    (folder / "r-old.json").write_text(json.dumps({"schema": 7, "replica_id": "r-old"}))
    (folder / ".r-fresh.json.1a2b.tmp").write_text("{")
    (folder / "notes.txt").write_text("x")
    seen = {r["replica_id"]: r for r in replicas_observed(target, "demo", NOW)}
    assert sorted(seen) == ["r-cut", "r-fresh", "r-old", "r-slow", "r-stale"]
    assert seen["r-fresh"]["stale"] is False and seen["r-fresh"]["heartbeat_age_s"] == pytest.approx(29, abs=0.01)
    assert seen["r-fresh"]["adapters"] == OBSERVED["adapters"] and seen["r-fresh"]["stale_after_s"] == 30.0
    assert seen["r-stale"]["stale"] is True
    assert seen["r-slow"]["stale"] is False and seen["r-slow"]["stale_after_s"] == 60.0
    assert "not valid JSON" in seen["r-cut"]["damaged"] and seen["r-cut"]["stale"] is None
    assert "schema" in seen["r-old"]["damaged"] and seen["r-old"]["file"] == "r-old.json"
    assert replicas_observed(target, "other", NOW) == []


def test_reads_what_the_server_writes(tmp_path: Path) -> None:
    """The server's own writer and the orchestrator's reader agree on the file."""
    target = LocalFolderTarget(tmp_path)
    reporter = ReplicaReporter(target.app_root("demo") / REPLICA_DIR, "r1", 10.0)
    target.app_root("demo").mkdir()
    assert reporter.write(OBSERVED)
    [seen] = replicas_observed(target, "demo")
    assert seen["replica_id"] == "r1" and seen["stale"] is False and "damaged" not in seen
    assert {k: seen[k] for k in OBSERVED} == OBSERVED


class FakeShare:
    """The `ShareClient` calls the reader makes, as azure-storage-file-share answers them: a missing directory
    raises `ResourceNotFoundError` on listing; items are mappings with name, is_directory and size."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads: list[str] = []

    def get_directory_client(self, path: str) -> SimpleNamespace:
        def listing() -> list[dict[str, Any]]:
            prefix = f"{path}/"
            inside = {k[len(prefix):]: v for k, v in self.files.items() if k.startswith(prefix)}
            if not inside:
                raise ResourceNotFoundError("The specified resource does not exist.")
            names = {k.split("/")[0] for k in inside}
            return [{"name": n, "is_directory": n not in inside, "size": len(inside.get(n, b""))} for n in names]
        return SimpleNamespace(list_directories_and_files=listing)

    def get_file_client(self, path: str) -> SimpleNamespace:
        def download_file() -> SimpleNamespace:
            self.downloads.append(path)
            if path not in self.files:
                raise ResourceNotFoundError("The specified resource does not exist.")
            return SimpleNamespace(readall=lambda: self.files[path])
        return SimpleNamespace(download_file=download_file)


def test_share_reports_under_the_targets_root(tmp_path: Path) -> None:
    """On Azure Files: `<root>/<app>/_replicas/*.json` of the share; other names and oversized files are not
    downloaded; a missing folder is no reports."""
    write_report(tmp_path, "r1", NOW)
    good = (tmp_path / "r1.json").read_bytes()
    share = FakeShare({"stores/demo/_replicas/r1.json": good, "stores/demo/_replicas/.r1.json.tmp": b"{",
                       "stores/demo/_replicas/big.json": b" " * (2 << 20), "stores/demo/_replicas/sub/x.json": good,
                       "stores/demo/manifest.json": b"{}"})
    target = AzureFileShareTarget(ShareSettings(share_name="s", connection_string="UseDevelopmentStorage=true",
                                                root="stores"))
    target._client = share  # the share the property would build
    seen = {r["replica_id"]: r for r in replicas_observed(target, "demo", NOW)}
    assert sorted(seen) == ["big", "r1"]
    assert seen["r1"]["stale"] is False and seen["r1"]["adapters"] == OBSERVED["adapters"]
    assert "more than" in seen["big"]["damaged"]
    assert share.downloads == ["stores/demo/_replicas/r1.json"]
    assert replicas_observed(target, "other", NOW) == []



@pytest.mark.azurite
async def test_status_api_shows_each_replica(host) -> None:  # noqa: F811
    """GET /api/apps/{app}: every report with `stale`, a damaged one as such (200, never a 500); an app whose
    replicas never reported has an empty list."""
    serve(host, "obs", upload(host, "obs", "alpha", "1"))
    folder = host.svc.target.app_root("obs") / REPLICA_DIR
    now = datetime.now(UTC)
    write_report(folder, "r-live", now)
    write_report(folder, "r-gone", now - timedelta(minutes=5))
    (folder / "r-bad.json").write_bytes(b"\x00garbage")
    status, info = await call(host, "GET", "apps/obs")
    assert status == 200, info
    seen = {r["replica_id"]: r for r in info["replicas_observed"]}
    assert sorted(seen) == ["r-bad", "r-gone", "r-live"] and info["replicas_observed_error"] is None
    assert seen["r-live"]["stale"] is False and seen["r-live"]["alias_version"] == "alpha@abc"
    assert seen["r-gone"]["stale"] is True and seen["r-gone"]["heartbeat_age_s"] >= 300
    assert seen["r-bad"]["stale"] is None and "not valid JSON" in seen["r-bad"]["damaged"]

    upload(host, "quiet", "alpha", "2")
    status, info = await call(host, "GET", "apps/quiet")
    assert status == 200 and info["replicas_observed"] == [] and info["replicas_observed_error"] is None


@pytest.mark.azurite
async def test_unreadable_replica_folder_is_reported_not_a_500(host, monkeypatch: pytest.MonkeyPatch  # noqa: F811
                                                               ) -> None:
    def broken(target, app: str):
        raise PermissionError(13, "Permission denied", f"{app}/_replicas")

    monkeypatch.setattr(status_api, "replicas_observed", broken)
    serve(host, "locked", upload(host, "locked", "alpha", "1"))
    status, info = await call(host, "GET", "apps/locked")
    assert status == 200 and info["replicas_observed"] == []
    assert info["replicas_observed_error"].startswith("PermissionError") and info["served"]["adapter"] == "alpha"
