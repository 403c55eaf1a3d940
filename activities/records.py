"""Deployment records: every upload and every deploy request, from the moment it arrives to its one terminal stage.

A record is the blob `<app>/_deployments/<id>.json` in the upload container (adapter names cannot start with
'_', so it never meets an adapter folder), with its stage also in the blob's metadata so that one listing tells
which records are still open. Records are stamped with server clocks only, never the uploader's:

- an upload's record is made from its `_COMPLETE` marker as the storage service wrote it: its id is
  `<app>.<marker last-modified>-u<hash of adapter name and marker etag>` (the same for whoever sees the marker
  first: the blob trigger, the reconciler's pass, a status query), and it is accepted at the marker's
  last-modified time (whole seconds, the storage service's clock; markers of the same second are ordered by
  when the orchestrator first saw them, `seen_at`);
- a deploy request's record is made by the HTTP starter at the orchestrator's clock (microseconds):
  `<app>.<time>-r<random>`.

Lifecycle: `received` (open) → the rollout's stages → `live` | `rolled_back` | `failed` | `superseded`
(terminal). A record waiting to retry after a transient fault is `retrying` (open). A marker that is not a
well-formed, complete upload gets a `failed` record at once (cause `input`), never a rollout. The reconciler is
the only writer after creation. Per app the newest `KEEP_RECORDS` records are kept; older terminal ones are
deleted, except an upload's record while its marker still exists (it is what says that upload was handled).

Deleting an app (orchestrations/lifecycle.py) first writes its deletion marker `<app>/_lifecycle/deleting.json`:
while it exists `ingest` makes and returns nothing (no rollout starts). The deletion then removes every blob of the
app, its records included, the marker last: a deleted app keeps no records (the deletion's own record is its
Durable instance), and a later upload or deploy request starts the app afresh. A deploy request may name the content
it expects (`expect_sha256`: a rollback refuses a version whose adapter now holds other content).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from activities.adapter_store import (
    MARKER_NAME,
    AdapterStore,
    AdapterStoreError,
    CompletionMarker,
    check_sizes,
)
from activities.validation import APP_NAME_PATTERN, check_name

RECORDS_DIR = "_deployments"
#: A person's decisions on a deployment's rollout (`<app>/_decisions/<id>/<time>-<random>.json`): one blob each,
#: never rewritten, so a decision is never lost to a concurrent record write.
DECISIONS_DIR = "_decisions"
#: The app's deletion marker (`<app>/_lifecycle/deleting.json`), present while a deletion runs or after one failed.
DELETING_BLOB = "_lifecycle/deleting.json"
TERMINAL = frozenset({"live", "rolled_back", "failed", "superseded"})
#: Records kept per app (older terminal ones are deleted; see the module docstring).
KEEP_RECORDS = 200
_READ_THREADS = 8


def stamp(when: datetime) -> str:
    """The server-time part of every id the orchestrator makes (`YYYYmmddTHHMMSSffffff`, UTC)."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")


def upload_record_id(app: str, adapter: str, etag: str, modified: datetime) -> str:
    """The record id of the upload whose marker has this etag and last-modified time."""
    digest = hashlib.sha256(f"{adapter}\0{str(etag).strip(chr(34))}".encode()).hexdigest()[:10]
    return f"{app}.{stamp(modified)}-u{digest}"


#: `<app>.<server time YYYYmmddTHHMMSSffffff>-u<10 hex>` (an upload) or `-r<6 hex>` (a deploy request).
RECORD_ID = re.compile(rf"({APP_NAME_PATTERN.pattern})\.\d{{8}}T\d{{12}}-(?:(u)[0-9a-f]{{10}}|r[0-9a-f]{{6}})")


def app_of(record_id: str) -> str:
    """The app a record id belongs to ('' when it is not a well-formed record id)."""
    match = RECORD_ID.fullmatch(record_id)
    return match.group(1) if match else ""


def is_upload_id(record_id: str) -> bool:
    """A well-formed id of an upload's record (not a deploy request's)."""
    match = RECORD_ID.fullmatch(record_id)
    return bool(match and match.group(2))


def is_terminal(record: dict[str, Any]) -> bool:
    return record.get("stage") in TERMINAL


class DeploymentRecords:
    """Create, read and update one upload container's deployment records."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    # -- names --------------------------------------------------------------------------------------------
    def _app_prefix(self, app: str) -> str:
        return f"{self.store.settings.prefix}{check_name('app', app)}/"

    def _blob(self, app: str, record_id: str) -> str:
        if app_of(record_id) != app:
            raise ValueError(f"{record_id!r} is not a deployment id of app {app!r}")
        return f"{self._app_prefix(app)}{RECORDS_DIR}/{record_id}.json"

    # -- storage primitives ---------------------------------------------------------------------------------
    def _write(self, record: dict[str, Any], create: bool = False) -> bool:
        """Write a record; with `create`, only when none exists (False when one did)."""
        from azure.core.exceptions import ResourceExistsError

        record["updated_at"] = datetime.now(UTC).isoformat()
        try:
            self.store.container.upload_blob(
                self._blob(record["app"], record["id"]), json.dumps(record, default=str),
                overwrite=not create, metadata={"stage": record["stage"]},
            )
        except ResourceExistsError:
            return False
        return True

    def _listing(self, app: str, folder: str = "") -> Iterator[Any]:
        """One listing of the app's blobs (under `folder`) with metadata; a missing container is created."""
        from azure.core.exceptions import ResourceNotFoundError

        prefix = f"{self._app_prefix(app)}{folder}"
        try:
            yield from self.store.container.list_blobs(name_starts_with=prefix, include=["metadata"])
        except ResourceNotFoundError:
            self.store.ensure_container()

    def get(self, app: str, record_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            raw = self.store.container.download_blob(self._blob(app, record_id)).readall()
        except ResourceNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or record.get("id") != record_id:  # a damaged blob never wedges the app
            return {**_new(record_id, app, "?", "unknown", datetime.now(UTC)), "stage": "failed", "cause": "input",
                    "reason": "the deployment record is unreadable (damaged blob)"}
        return record

    def _get_many(self, app: str, ids: list[str]) -> list[dict[str, Any]]:
        if len(ids) <= 1:
            found = [self.get(app, i) for i in ids]
        else:
            with ThreadPoolExecutor(min(_READ_THREADS, len(ids))) as pool:
                found = list(pool.map(lambda i: self.get(app, i), ids))
        return [r for r in found if r is not None]

    # -- entry points ---------------------------------------------------------------------------------------
    def create_request(self, app: str, adapter: str, force_restart: bool = False, expect_sha256: str | None = None,
                       **extra: Any) -> dict[str, Any]:
        """Record a deploy request for a stored adapter (`LookupError` when it is missing or incomplete, or when
        `expect_sha256` is given and the store now holds other content under that name). `extra`: more fields
        for the record (e.g. `rollback_of`)."""
        check_name("adapter", adapter)
        done = self.store.get_complete(app, adapter)
        if expect_sha256 is not None and done.sha256 != expect_sha256:
            raise LookupError(f"adapter {adapter!r} of app {app!r} was uploaded again with other content (sha256 "
                              f"{done.sha256[:12]}, not {expect_sha256[:12]}); a rollback redeploys an upload, and that "
                              "version's upload was replaced: deploy its folder again to go back to it")
        now = datetime.now(UTC)
        record = _new(f"{app}.{stamp(now)}-r{secrets.token_hex(3)}", app, adapter, "request", now)
        record.update(sha256=done.sha256, force_restart=force_restart, **extra)
        self._write(record, create=True)
        return record

    def ingest(self, app: str) -> list[dict[str, Any]]:
        """Make records for markers that have none, prune old records; the open records, oldest first. While the
        app is being deleted (`deletion`): nothing (no new rollout starts; the deletion removes the records)."""
        prefix = self._app_prefix(app)
        if self.deletion(app) is not None:
            return []
        markers: dict[str, Any] = {}
        sizes: dict[str, dict[str, int]] = {}
        stages: dict[str, str] = {}
        for blob in self._listing(app):
            top, _, rest = blob.name[len(prefix):].partition("/")
            if top == RECORDS_DIR:
                if rest.endswith(".json") and app_of(rest[:-5]) == app:  # anything else is not ours: ignored
                    stages[rest[:-5]] = (blob.metadata or {}).get("stage", "received")
            elif rest == MARKER_NAME:
                markers[top] = blob
            else:
                sizes.setdefault(top, {})[rest] = blob.size
        live_markers = set()
        for adapter, blob in sorted(markers.items(), key=lambda kv: (kv[1].last_modified, kv[0])):
            record_id = upload_record_id(app, adapter, blob.etag, blob.last_modified)
            live_markers.add(record_id)
            if record_id not in stages:
                record = self._upload_record(app, adapter, blob, sizes.get(adapter, {}), record_id)
                if record is not None:
                    self._write(record, create=True)  # made here or, at the same moment, by another ingest
                    stages[record_id] = record["stage"]
        self._prune(app, stages, live_markers)
        open_ids = [i for i, stage in stages.items() if stage not in TERMINAL]
        return sorted((r for r in self._get_many(app, open_ids) if not is_terminal(r)), key=order)

    def _upload_record(self, app: str, adapter: str, blob: Any, sizes: dict[str, int], record_id: str
                       ) -> dict[str, Any] | None:
        """The new record of one marker: `received`, or `failed` when it is not a complete, well-formed upload.
        None when the marker changed while being read (the next pass sees the new one)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        record = _new(record_id, app, adapter, "upload", blob.last_modified)
        record["marker_etag"] = str(blob.etag).strip('"')
        try:
            check_name("adapter", adapter)
            if blob.size > 1 << 20:
                raise AdapterStoreError(f"{MARKER_NAME} is {blob.size} bytes (at most 1 MiB)")
            raw = self.store.container.download_blob(
                blob.name, etag=blob.etag, match_condition=MatchConditions.IfNotModified).readall()
            marker = CompletionMarker.from_json(raw)
            check_sizes(app, adapter, marker, sizes)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        except (AdapterStoreError, ValueError) as exc:
            record.update(stage="failed", cause="input", reason=f"upload refused: {exc}")
            record["history"].append({"stage": "failed", "at": record["accepted_at"]})
            return record
        record["sha256"] = marker.sha256
        return record

    # -- the reconciler's writes ------------------------------------------------------------------------------
    def update(self, app: str, record_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` into a record (a terminal record is never changed again); returns the record."""
        record = self.get(app, record_id)
        if record is None:
            raise LookupError(f"no deployment record {record_id!r}")
        if is_terminal(record):
            return record
        record.update(changes)
        if record["stage"] in TERMINAL and not record.get("ended_at"):
            record["ended_at"] = datetime.now(UTC).isoformat()
        self._write(record)
        return record

    # -- a person's decisions on a waiting rollout -----------------------------------------------------------------
    def add_decision(self, app: str, record_id: str, action: str, by: str | None) -> dict[str, Any]:
        """Keep a decision (`promote`, `abort`, `approve`, `reject`) on the record's rollout; returns it."""
        now = datetime.now(UTC)
        decision = {"action": action, "by": by, "at": now.isoformat()}
        name = f"{self._decisions_folder(app, record_id)}{stamp(now)}-{secrets.token_hex(4)}.json"
        self.store.container.upload_blob(name, json.dumps(decision), overwrite=False)
        return decision

    def _decisions_folder(self, app: str, record_id: str) -> str:
        self._blob(app, record_id)  # the id's own checks
        return f"{self._app_prefix(app)}{DECISIONS_DIR}/{record_id}/"

    def decisions(self, app: str, record_id: str) -> list[dict[str, Any]]:
        """The decisions on the record's rollout, oldest first (by the server's time of each)."""
        from azure.core.exceptions import ResourceNotFoundError

        folder = self._decisions_folder(app, record_id)
        found = []
        for blob in sorted(self._listing(app, folder.removeprefix(self._app_prefix(app))), key=lambda b: b.name):
            with contextlib.suppress(ResourceNotFoundError, ValueError):  # deleted meanwhile, or not JSON
                found.append(json.loads(self.store.container.download_blob(blob.name).readall()))
        return [d for d in found if isinstance(d, dict)]

    def _prune(self, app: str, stages: dict[str, str], protected: set[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        if len(stages) <= KEEP_RECORDS:
            return
        prefix = self._app_prefix(app)
        for record_id in sorted(stages):  # oldest first: ids sort by their server time stamp
            if len(stages) <= KEEP_RECORDS:
                return
            if stages[record_id] in TERMINAL and record_id not in protected:
                with contextlib.suppress(ResourceNotFoundError):  # another ingest pruned it first
                    self.store.container.delete_blob(f"{prefix}{RECORDS_DIR}/{record_id}.json")
                del stages[record_id]

    # -- reading for the status API ---------------------------------------------------------------------------
    def recent(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        """The app's newest records, newest first."""
        prefix = f"{self._app_prefix(app)}{RECORDS_DIR}/"
        ids = sorted((b.name[len(prefix):-5] for b in self._listing(app, f"{RECORDS_DIR}/")
                      if b.name.endswith(".json") and app_of(b.name[len(prefix):-5]) == app), reverse=True)
        return sorted(self._get_many(app, ids[: limit + 8]), key=order, reverse=True)[:limit]

    def has_app(self, app: str) -> bool:
        """True when the upload container holds anything of the app (an upload, a record, a deletion marker)."""
        return next(iter(self._listing(app)), None) is not None

    def open_ids(self, app: str) -> list[str]:
        """Ids of the app's records that have not ended (one listing, stages from the blobs' metadata)."""
        prefix = f"{self._app_prefix(app)}{RECORDS_DIR}/"
        ids = []
        for blob in self._listing(app, f"{RECORDS_DIR}/"):
            record_id = blob.name[len(prefix):].removesuffix(".json")
            if blob.name.endswith(".json") and app_of(record_id) == app:
                if (blob.metadata or {}).get("stage", "received") not in TERMINAL:
                    ids.append(record_id)
        return sorted(ids)

    def live_records(self, app: str) -> list[dict[str, Any]]:
        """The app's records that went live (with the version they served), newest first."""
        return [r for r in self.recent(app, KEEP_RECORDS) if r.get("stage") == "live" and r.get("version")]

    # -- the app's deletion (orchestrations/lifecycle.py) ------------------------------------------------------
    def deletion(self, app: str) -> dict[str, Any] | None:
        """The app's deletion marker (`{"id", "requested_at"}`), or None when no deletion runs."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            raw = self.store.container.download_blob(f"{self._app_prefix(app)}{DELETING_BLOB}").readall()
        except ResourceNotFoundError:
            return None
        try:
            marker = json.loads(raw)
        except (ValueError, RecursionError):
            marker = None
        return marker if isinstance(marker, dict) else {"id": None, "requested_at": None}

    def mark_deleting(self, app: str, deletion_id: str) -> dict[str, Any]:
        """Write the deletion marker: from now on `ingest` starts nothing and the platform activities refuse to
        start the app (see `activities.functions`)."""
        self.store.ensure_container()
        marker = {"id": deletion_id, "requested_at": datetime.now(UTC).isoformat()}
        self.store.container.upload_blob(f"{self._app_prefix(app)}{DELETING_BLOB}", json.dumps(marker),
                                         overwrite=True)
        return marker

    def clear_deleting(self, app: str) -> None:
        """Remove the deletion marker (a deletion that was not started after all)."""
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.store.container.delete_blob(f"{self._app_prefix(app)}{DELETING_BLOB}")

    def delete_app(self, app: str) -> int:
        """Delete every blob of the app (uploads, records), the deletion marker last; returns how many. Idempotent."""
        from azure.core.exceptions import ResourceNotFoundError

        marker = f"{self._app_prefix(app)}{DELETING_BLOB}"
        names = [b.name for b in self._listing(app) if b.name != marker]

        def delete(name: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):
                self.store.container.delete_blob(name)

        if names:
            with ThreadPoolExecutor(min(_READ_THREADS, len(names))) as pool:
                list(pool.map(delete, names))
        delete(marker)
        return len(names)

    def list_apps(self) -> list[str]:
        """Apps that have anything in the upload container (a missing container: none). Folders whose name
        breaks the app-name rule are not apps."""
        from azure.core.exceptions import ResourceNotFoundError

        prefix = self.store.settings.prefix
        try:
            names = [i.name for i in self.store.container.walk_blobs(name_starts_with=prefix or None, delimiter="/")]
        except ResourceNotFoundError:
            self.store.ensure_container()
            return []
        apps = {name[len(prefix):].rstrip("/") for name in names}
        return sorted(app for app in apps if APP_NAME_PATTERN.fullmatch(app))


def _new(record_id: str, app: str, adapter: str, source: str, accepted: datetime) -> dict[str, Any]:
    at = accepted.astimezone(UTC).isoformat()
    return {
        "id": record_id, "app": app, "adapter": adapter, "source": source, "sha256": None,
        "accepted_at": at, "seen_at": datetime.now(UTC).isoformat(), "force_restart": False,
        "stage": "received", "history": [{"stage": "received", "at": at}],
        "reason": None, "cause": None, "superseded_by": None, "attempts": 0, "retry_at": None, "instance_id": None,
    }


def order(record: dict[str, Any]) -> tuple[str, str, str]:
    """Arrival order: the second of the server's acceptance time (markers carry whole seconds only), then when
    the orchestrator first saw it (uploads and requests of the same second alike), then the id."""
    return ((record.get("accepted_at") or "")[:19], record.get("seen_at") or "", record.get("id") or "")
