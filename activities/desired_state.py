"""Desired state per app: which adapter should be served, read from the upload store (level-triggered).

The desired adapter is the newest of: the newest complete upload (`AdapterStore.find_complete_adapters`) and
the latest explicit deploy request (`POST /api/apps/{app}/deployments`), kept as the blob
`<app>/_deploy_request.json` next to the app's adapters (adapter names cannot start with '_').
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

    def resolve(self, app: str) -> dict[str, Any] | None:
        """`{adapter, sha256, accepted_at, request_id?, force_restart}` of the adapter that should serve."""
        uploads = self.store.find_complete_adapters(app)
        newest = uploads[0] if uploads else None
        request = self.last_request(app)
        upload_time = _parse_time(newest.uploaded_at or newest.completed_at) if newest else None
        if request and (upload_time is None or _parse_time(request.requested_at) >= upload_time):
            chosen = self.store.get_complete(app, request.adapter)
            return {"adapter": chosen.adapter, "sha256": chosen.sha256, "accepted_at": request.requested_at,
                    "request_id": request.request_id, "force_restart": request.force_restart}
        if newest is None:
            return None
        return {"adapter": newest.adapter, "sha256": newest.sha256, "accepted_at": upload_time.isoformat(),
                "force_restart": False}

    def list_apps(self) -> list[str]:
        """Apps that have anything in the upload container."""
        prefix = self.store.settings.prefix
        apps = set()
        for item in self.store.container.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
            name = item.name[len(prefix):].rstrip("/")
            if name and "/" not in name:
                apps.add(name)
        return sorted(apps)
