"""The app lifecycle's storage and platform pieces: existence and the deletion marker in the upload container
(Azurite), ingest starting nothing while an app is being deleted, the blob sweep, rollback's lookups (live records,
a request only while the store holds the expected content), the local store root's removal, and LocalApps.delete
stopping the server for good (heal leaves it alone)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from activities.adapter_store import LocalFolderTarget
from activities.apps import LocalApps
from activities.platform.base import AppSpec
from activities.platform.local import LocalPlatform, LocalPlatformSettings
from activities.records import DELETING_BLOB, DeploymentRecords
from inference_image.inference_server.manifest import AdapterEntry, Manifest
from tests.activities.test_records import records, upload  # noqa: F401 - the Azurite-backed fixture

STANDIN = Path(__file__).resolve().parent / "standin_server.py"


@pytest.mark.azurite
def test_an_app_exists_while_it_has_blobs(records: DeploymentRecords, tmp_path: Path) -> None:  # noqa: F811
    """has_app: nothing → False; an upload → True; `demo` is not `demo2` (prefixes end at the '/')."""
    assert not records.has_app("demo")
    upload(records, tmp_path, "demo2", "alpha", "1")
    assert not records.has_app("demo")
    upload(records, tmp_path, "demo", "alpha", "1")
    assert records.has_app("demo")


@pytest.mark.azurite
def test_ingest_starts_nothing_while_the_app_is_being_deleted(records: DeploymentRecords,  # noqa: F811
                                                             tmp_path: Path) -> None:
    """With the deletion marker, ingest returns no open record and makes none; without it, all is as before."""
    done = upload(records, tmp_path, "demo", "alpha", "1")
    marker = records.mark_deleting("demo", "delete-demo.20260101T000000000000")
    assert records.deletion("demo") == marker and marker["id"] == "delete-demo.20260101T000000000000"
    assert records.ingest("demo") == [] and records.recent("demo") == []
    assert records.deletion("other") is None
    records.clear_deleting("demo")
    records.clear_deleting("demo")  # idempotent
    assert records.deletion("demo") is None
    assert [r["id"] for r in records.ingest("demo")] == [done.deployment_id]
    assert records.open_ids("demo") == [done.deployment_id]
    records.update("demo", done.deployment_id, {"stage": "live", "version": "alpha@x"})
    assert records.open_ids("demo") == []


@pytest.mark.azurite
def test_damaged_deletion_marker_still_counts(records: DeploymentRecords) -> None:  # noqa: F811
    """A marker blob that is not JSON still means "being deleted" (nothing may start the app)."""
    records.store.container.upload_blob(f"demo/{DELETING_BLOB}", b"\xff")
    assert records.deletion("demo") == {"id": None, "requested_at": None}
    assert records.ingest("demo") == []


@pytest.mark.azurite
def test_delete_app_removes_every_blob_of_the_app_only(records: DeploymentRecords, tmp_path: Path) -> None:  # noqa: F811
    """Uploads, records and the marker go; another app (even one whose name starts the same) stays."""
    upload(records, tmp_path, "demo", "alpha", "1")
    upload(records, tmp_path, "demo", "beta", "2")
    other = upload(records, tmp_path, "demo-two", "alpha", "3")
    records.ingest("demo")
    records.ingest("demo-two")
    records.mark_deleting("demo", "delete-demo.20260101T000000000000")
    removed = records.delete_app("demo")
    assert removed >= 6  # 2 adapters x (2 files + marker) + 2 records
    assert not records.has_app("demo") and records.deletion("demo") is None
    assert records.list_apps() == ["demo-two"]
    assert [r["id"] for r in records.recent("demo-two")] == [other.deployment_id]
    assert records.delete_app("demo") == 0  # again: nothing left, no error


@pytest.mark.azurite
def test_rollback_lookups(records: DeploymentRecords, tmp_path: Path) -> None:  # noqa: F811
    """live_records lists what went live (newest first); a request naming the content it expects is refused once
    the store holds other content under that name; extra fields land in the record."""
    first = upload(records, tmp_path, "demo", "alpha", "1")
    records.ingest("demo")
    records.update("demo", first.deployment_id, {"stage": "live", "version": f"alpha@{first.sha256[:12]}"})
    second = upload(records, tmp_path, "demo", "beta", "2")
    records.ingest("demo")
    records.update("demo", second.deployment_id, {"stage": "live", "version": f"beta@{second.sha256[:12]}"})
    failed = records.create_request("demo", "alpha")
    records.update("demo", failed["id"], {"stage": "failed", "version": "alpha@zzz"})
    assert [r["id"] for r in records.live_records("demo")] == [second.deployment_id, first.deployment_id]
    request = records.create_request("demo", "alpha", False, first.sha256, rollback_of="beta@x", rollback_to="alpha@y")
    assert request["rollback_of"] == "beta@x" and records.get("demo", request["id"])["rollback_to"] == "alpha@y"
    upload(records, tmp_path, "demo", "alpha", "9")  # alpha now holds other content
    with pytest.raises(LookupError, match="upload was replaced: deploy its folder again"):
        records.create_request("demo", "alpha", False, first.sha256)


def test_local_target_removes_the_app_root_only(tmp_path: Path) -> None:
    """remove_app deletes `<root>/<app>` (manifest and versions); other apps stay; False when there is none."""
    target = LocalFolderTarget(tmp_path / "store")
    for app in ("demo", "demo2"):
        version = target.app_root(app) / "adapters" / "alpha" / ("a" * 64)
        version.mkdir(parents=True)
        (version / "adapter_config.json").write_text("{}")
        target.write_manifest(app, Manifest(adapters={"alpha": AdapterEntry("adapters/alpha/" + "a" * 64, "a" * 64,
                                                                            "alpha@aaaaaaaaaaaa")}, active="alpha"))
    assert target.remove_app("demo") is True
    assert not target.app_root("demo").exists() and target.read_manifest("demo") is None
    assert target.read_manifest("demo2") is not None
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["demo2"]
    assert target.remove_app("demo") is False


@pytest.fixture
def local_apps(tmp_path: Path) -> Iterator[tuple[LocalApps, LocalPlatform]]:
    settings = LocalPlatformSettings(state_dir=tmp_path / "state", store_root=tmp_path / "store",
                                     server_command=(sys.executable, str(STANDIN)), start_timeout=20.0,
                                     stop_timeout=5.0)
    platform = LocalPlatform(settings)
    try:
        yield LocalApps(platform, lambda name: AppSpec(app=name, image="local")), platform
    finally:
        platform.stop_all()


def test_local_delete_stops_the_server_and_heal_leaves_it_alone(local_apps) -> None:
    """delete: the server stops, its state is dropped (not existing), heal does not start it again; twice: False."""
    apps, platform = local_apps
    endpoint = apps.ensure("chat")["endpoint"]
    apps.ensure("other")
    assert requests.get(f"{endpoint}/health", timeout=5).ok
    assert apps.delete("chat") is True
    with pytest.raises(requests.RequestException):
        requests.get(f"{endpoint}/health", timeout=2)
    assert not apps.describe("chat").exists
    assert apps.heal("chat") == {"action": "none"} and not apps.describe("chat").exists
    assert apps.delete("chat") is False
    assert apps.describe("other").running  # other apps are not touched
