"""Deployment records against Azurite: one record per marker and per request, server clocks only, forged markers
end `failed` instead of raising, terminal records never change, pruning, app listing, a lost container."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import activities.records as records_module
from activities.adapter_store import MARKER_NAME, AdapterStore, BlobStoreSettings
from activities.records import DeploymentRecords, app_of, is_upload_id
from devhost.azurite import Azurite
from tests.activities.lora_builder import adapter_files, write_adapter

pytestmark = pytest.mark.azurite


@pytest.fixture
def records(azurite: Azurite, container_name: str) -> Iterator[DeploymentRecords]:
    store = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string, container=container_name))
    store.ensure_container()
    yield DeploymentRecords(store)
    store.container.delete_container()
    store.close()


def upload(records: DeploymentRecords, tmp_path: Path, app: str, name: str, seed: str):
    folder = write_adapter(tmp_path / f"{app}-{name}-{seed}", adapter_files(seed=seed))
    return records.store.upload_adapter_folder(folder, app, name)


def test_each_marker_gets_one_record_with_the_uploaders_id(records: DeploymentRecords, tmp_path: Path) -> None:
    """Ingest makes one `received` record per marker, under the id the uploader computed; again: no new record."""
    first = upload(records, tmp_path, "demo", "alpha", "1")
    records.ingest("demo")  # as the blob trigger does for each upload: seen in arrival order
    second = upload(records, tmp_path, "demo", "beta", "2")
    open_records = records.ingest("demo")
    assert [r["id"] for r in open_records] == [first.deployment_id, second.deployment_id]
    assert all(r["stage"] == "received" and r["source"] == "upload" for r in open_records)
    assert open_records[0]["sha256"] == first.sha256 and app_of(first.deployment_id) == "demo"
    assert [r["id"] for r in records.ingest("demo")] == [first.deployment_id, second.deployment_id]
    assert len(records.recent("demo")) == 2


def test_reupload_of_the_same_bytes_is_a_new_record(records: DeploymentRecords, tmp_path: Path) -> None:
    """The same content uploaded again is a new marker (new etag), hence a new record: it is tried again."""
    first = upload(records, tmp_path, "demo", "alpha", "1")
    records.ingest("demo")
    records.update("demo", first.deployment_id, {"stage": "failed", "cause": "transient"})
    again = upload(records, tmp_path, "demo", "alpha", "1")
    assert again.deployment_id != first.deployment_id and again.sha256 == first.sha256
    assert [r["id"] for r in records.ingest("demo")] == [again.deployment_id]


def test_uploaders_clock_is_ignored(records: DeploymentRecords, tmp_path: Path) -> None:
    """A marker claiming an upload time an hour ahead does not outrank a later deploy request."""
    done = upload(records, tmp_path, "demo", "alpha", "1")
    marker = json.loads(records.store.container.download_blob(f"demo/alpha/{MARKER_NAME}").readall())
    marker["uploaded_at"] = "2999-01-01T00:00:00+00:00"
    records.store.container.upload_blob(f"demo/alpha/{MARKER_NAME}", json.dumps(marker), overwrite=True)
    records.ingest("demo")  # the blob trigger records the upload before the request arrives
    request = records.create_request("demo", "alpha")
    order = [r["id"] for r in records.ingest("demo")]
    assert order[-1] == request["id"] and done.deployment_id not in order  # the rewritten marker is a new record
    assert len(order) == 2


@pytest.mark.parametrize("marker", [
    '{"files": {"a.json": {"size": 1e400, "sha256": "' + "0" * 64 + '"}}, "sha256": "' + "0" * 64 + '"}',
    "[" * 50_000 + "]" * 50_000,
    '{"files": {"a.json": {"size": 2, "sha256": "' + "0" * 64 + '"}}, "sha256": "' + "0" * 64 + '", "x": 1}',
    "not json",
])
def test_forged_markers_end_failed_with_a_reason(records: DeploymentRecords, marker: str) -> None:
    """A marker that is not a complete, well-formed upload gets a `failed` record naming why; ingest never raises."""
    records.store.container.upload_blob(f"demo/forged/{MARKER_NAME}", marker)
    assert records.ingest("demo") == []
    [record] = records.recent("demo")
    assert record["stage"] == "failed" and record["cause"] == "input" and "upload refused" in record["reason"]


def test_bad_adapter_name_ends_failed(records: DeploymentRecords, tmp_path: Path) -> None:
    """A marker under an adapter folder that breaks the naming rule gets a failed record, not a rollout."""
    done = upload(records, tmp_path, "demo", "alpha", "1")
    blob = records.store.container.download_blob(f"demo/alpha/{MARKER_NAME}").readall()
    records.store.container.upload_blob(f"demo/_Bad Name/{MARKER_NAME}", blob)
    assert [r["id"] for r in records.ingest("demo")] == [done.deployment_id]
    failed = [r for r in records.recent("demo") if r["stage"] == "failed"]
    assert len(failed) == 1 and "adapter name" in failed[0]["reason"]


def test_terminal_records_never_change(records: DeploymentRecords, tmp_path: Path) -> None:
    """After a terminal stage, updates are ignored; `ended_at` is stamped once."""
    request = records.create_request("demo", upload(records, tmp_path, "demo", "alpha", "1").adapter)
    ended = records.update("demo", request["id"], {"stage": "live"})
    assert ended["ended_at"]
    assert records.update("demo", request["id"], {"stage": "failed", "reason": "late"})["stage"] == "live"
    with pytest.raises(LookupError):
        records.update("demo", "demo.20260101T000000000000-rffffff", {"stage": "live"})


def test_request_for_a_missing_adapter_is_refused(records: DeploymentRecords) -> None:
    with pytest.raises(LookupError):
        records.create_request("demo", "ghost")
    assert records.recent("demo") == []


def test_prune_keeps_the_newest_and_open_ones(records: DeploymentRecords, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the limit, the oldest terminal request records are deleted; open ones and live markers' stay."""
    monkeypatch.setattr(records_module, "KEEP_RECORDS", 3)
    done = upload(records, tmp_path, "demo", "alpha", "1")
    ids = [records.create_request("demo", "alpha")["id"] for _ in range(4)]
    for record_id in ids[:3]:
        records.update("demo", record_id, {"stage": "superseded"})
    records.ingest("demo")  # makes the upload's record
    records.update("demo", done.deployment_id, {"stage": "live"})
    records.ingest("demo")  # prunes
    kept = {r["id"] for r in records.recent("demo")}
    assert kept == {done.deployment_id, ids[2], ids[3]}


def test_apps_list_skips_invalid_names_and_survives_a_lost_container(records: DeploymentRecords,
                                                                    tmp_path: Path) -> None:
    """`demo.x` is not an app; after the container is deleted the listing is empty (and the container is back)."""
    upload(records, tmp_path, "demo", "alpha", "1")
    records.store.container.upload_blob(f"demo.x/alpha/{MARKER_NAME}", b"{}")
    assert records.list_apps() == ["demo"]
    records.store.container.delete_container()
    assert records.list_apps() == []
    assert records.ingest("demo") == [] and records.recent("demo") == []


def test_damaged_or_foreign_record_blobs_never_wedge_the_app(records: DeploymentRecords, tmp_path: Path) -> None:
    """Garbage under `_deployments/` (bytes, a JSON list, a name that is no record id) is skipped or read as a
    failed record; ingest and the listing go on, and the real upload still gets its record."""
    container = records.store.container
    container.upload_blob("demo/_deployments/notes.json", b"hello")
    container.upload_blob("demo/_deployments/demo.x.json", b"[]")
    damaged = "demo.20260101T000000000000-rabcdef"
    container.upload_blob(f"demo/_deployments/{damaged}.json", b"\xff\xfe", metadata={"stage": "received"})
    done = upload(records, tmp_path, "demo", "alpha", "1")
    assert [r["id"] for r in records.ingest("demo")] == [done.deployment_id]
    listed = {r["id"]: r for r in records.recent("demo")}
    assert set(listed) == {done.deployment_id, damaged}
    assert listed[damaged]["stage"] == "failed" and "unreadable" in listed[damaged]["reason"]
    assert records.update("demo", damaged, {"stage": "live"})["stage"] == "failed"


def test_record_ids_have_one_shape() -> None:
    """Only `<app>.<YYYYmmddTHHMMSSffffff>-u<10 hex>` / `-r<6 hex>` are record ids; anything else names no app."""
    assert app_of("demo.20260101T000000000000-rabcdef") == "demo"
    assert app_of("demo.20260101T000000000000-u0123456789") == "demo"
    assert is_upload_id("my-uploads.20260101T000000000000-u0123456789")
    assert not is_upload_id("my-uploads.20260101T000000000000-rabcdef")  # '-u' in the app name is not an upload
    for bad in ("demo", "demo.x", "provision-demo.20260101T000000000000", "demo.20260101T000000000000-rABCDEF",
                "Demo.20260101T000000000000-rabcdef", "demo.20260101T000000000000-u12345", "a/b.1-r1",
                "demo.2026010100000000000-rabcdef"):
        assert app_of(bad) == ""
