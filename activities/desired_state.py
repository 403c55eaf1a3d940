"""Desired state per app: which adapter should be served, read from the upload store (level-triggered).

The desired adapter is the newest of: the newest upload (by its `_COMPLETE` marker) and the latest explicit
deploy request (`POST /api/apps/{app}/deployments`), kept as the blob `<app>/_deploy_request.json` next to the
app's adapters (adapter names cannot start with '_'). An upload whose marker exists but which is not a complete,
well-formed upload is still desired — its rollout then fails at validation with the reason — so that every
upload reaches a terminal stage; it is identified by `broken:<adapter>:<marker etag>` instead of a sha256.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from activities.adapter_store import AdapterStore
from activities.validation import check_name

REQUEST_BLOB = "_deploy_request.json"


@dataclass(frozen=True)
class DeployRequest:
    adapter: str
    request_id: str
    requested_at: str
    force_restart: bool = False


def _parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class DesiredState:
    """Reads and records what each app should serve."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def _request_blob(self, app: str) -> str:
        return f"{self.store.settings.prefix}{check_name('app', app)}/{REQUEST_BLOB}"

    def request_deployment(self, app: str, adapter: str, request_id: str, force_restart: bool = False) -> DeployRequest:
        """Record an explicit deploy of a stored adapter; `LookupError` when it is missing or incomplete."""
        check_name("adapter", adapter)
        self.store.get_complete(app, adapter)
        request = DeployRequest(adapter, request_id, datetime.now(UTC).isoformat(), force_restart)
        self.store.container.upload_blob(self._request_blob(app), json.dumps(asdict(request)), overwrite=True)
        return request

    def last_request(self, app: str) -> DeployRequest | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            raw = self.store.container.download_blob(self._request_blob(app)).readall()
        except ResourceNotFoundError:
            return None
        return DeployRequest(**json.loads(raw))

    def newest_upload(self, app: str) -> dict[str, Any] | None:
        """The upload with the newest marker, complete or not (one listing; only the newest markers are read)."""
        from activities.adapter_store import MARKER_NAME, AdapterStoreError

        prefix = f"{self.store.settings.prefix}{check_name('app', app)}/"
        markers = [b for b in self.store.container.list_blobs(name_starts_with=prefix)
                   if b.name.endswith(f"/{MARKER_NAME}") and b.name.count("/") == prefix.count("/") + 1]
        if not markers:
            return None
        newest = max(markers, key=lambda b: b.last_modified)
        complete = []  # uploads completed in the newest marker's second (marker times are whole seconds)
        for blob in markers:
            if blob.last_modified == newest.last_modified:
                try:
                    complete.append(self.store.get_complete(app, blob.name[len(prefix):].split("/", 1)[0]))
                except (AdapterStoreError, ValueError):
                    pass
        if complete:  # the finer `uploaded_at` orders uploads completed within the same second
            done = max(complete, key=lambda a: (a.uploaded_at, a.adapter))
            return {"adapter": done.adapter, "sha256": done.sha256,
                    "accepted_at": _parse_time(done.uploaded_at or done.completed_at).isoformat()}
        adapter = newest.name[len(prefix):].split("/", 1)[0]
        etag = str(newest.etag).strip('"')
        return {"adapter": adapter, "sha256": f"broken:{adapter}:{etag}", "accepted_at": newest.last_modified.isoformat()}

    def resolve(self, app: str) -> dict[str, Any] | None:
        """`{adapter, sha256, accepted_at, request_id?, force_restart}` of the adapter that should serve."""
        upload = self.newest_upload(app)
        request = self.last_request(app)
        if request and (upload is None or _parse_time(request.requested_at) >= _parse_time(upload["accepted_at"])):
            chosen = self.store.get_complete(app, request.adapter)
            return {"adapter": chosen.adapter, "sha256": chosen.sha256, "accepted_at": request.requested_at,
                    "request_id": request.request_id, "force_restart": request.force_restart}
        return {**upload, "force_restart": False} if upload else None

    def list_apps(self) -> list[str]:
        """Apps that have anything in the upload container."""
        prefix = self.store.settings.prefix
        apps = set()
        for item in self.store.container.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
            name = item.name[len(prefix):].rstrip("/")
            if name and "/" not in name:
                apps.add(name)
        return sorted(apps)
