"""Triggers that start work: the adapter-upload blob trigger and the HTTP starters.

Covers:
- blob trigger on `adapters/{app}/{adapter}/_COMPLETE` (the completion marker our uploader writes last, see
  activities/adapter_store.py; Event Grid source in Azure, a container poller in devhost) → the upload's
  deployment record (activities/records.py), then wake the reconciler; a folder whose name breaks the app-name
  rule is not an app and is ignored (logged);
- `POST /api/apps/{app}/deployments` (deploy a stored adapter; `force_restart` optional) → a deploy request's
  record, then wake the reconciler; 202 with the record's id and status URL (`request_deployment`, also behind
  `POST /api/apps/{app}/rollback` in orchestrations/lifecycle.py); 409 while the app is being deleted;
- `POST /api/apps/{app}/provision` and `POST /api/apps/{app}/restart` → their orchestrations; 202 with the status URL;
- a timer every 5 minutes that wakes (or starts) the reconciler of every app in the upload container, so an upload
  whose event was lost, or an app whose reconciler was terminated, is still reconciled.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import azure.durable_functions as df
import azure.functions as func

from activities.records import stamp
from activities.services import services
from activities.validation import APP_NAME_PATTERN, check_name

from .http_util import BadRequest, answers_bad_requests, app_name, json_body, json_response
from .policies import RolloutTiming
from .progressive import ACTION_EVENT, ACTIONS_BY_STAGE, SUPERSEDE
from .provision import PROVISION_ORCHESTRATOR, RESTART_ORCHESTRATOR
from .reconcile import RECONCILE_ORCHESTRATOR, WAKE_EVENT, ReconcileState, reconcile_instance_id

bp = df.Blueprint()
log = logging.getLogger(__name__)

ADAPTERS_CONNECTION = "AdaptersStorage"
MARKER_PATH = "adapters/{app}/{adapter}/_COMPLETE"
HEAL_SCHEDULE = "0 */5 * * * *"
LIVE_STATES = {
    df.OrchestrationRuntimeStatus.Running,
    df.OrchestrationRuntimeStatus.Pending,
    df.OrchestrationRuntimeStatus.ContinuedAsNew,
}


async def wake_reconciler(client: df.DurableOrchestrationClient, app: str, reason: str, newer: bool = False) -> str:
    """Start the app's reconciler, or wake it if it runs; returns its instance id. `newer`: a deployment was just
    accepted, so a rollout waiting for a person or in a canary hold is told to give way (`supersede`)."""
    instance_id = reconcile_instance_id(app)
    status = await client.get_status(instance_id)
    if status and status.runtime_status in LIVE_STATES:
        await client.raise_event(instance_id, WAKE_EVENT, {"reason": reason})
        if newer:
            await _supersede_waiting_rollout(client, status, reason)
        return instance_id
    state = ReconcileState(app=app, timing=RolloutTiming.from_env().to_dict())
    try:
        await client.start_new(RECONCILE_ORCHESTRATOR, instance_id, state.__dict__)
    except Exception:  # the host answers 500 when another trigger started it a moment ago: wake that one
        status = await client.get_status(instance_id)
        if not (status and status.runtime_status in LIVE_STATES):
            raise
        await client.raise_event(instance_id, WAKE_EVENT, {"reason": reason})
    return instance_id


async def _supersede_waiting_rollout(client: df.DurableOrchestrationClient, reconciler: df.DurableOrchestrationStatus,
                                     reason: str) -> None:
    """Tell the rollout the reconciler runs to give way when it waits (approval, canary hold); the rollout checks
    that a newer record exists before it ends superseded."""
    phase = reconciler.custom_status if isinstance(reconciler.custom_status, dict) else {}
    rollout_id = phase.get("instance_id") if phase.get("phase") == "rolling_out" else None
    if not rollout_id:
        return
    rollout = await client.get_status(rollout_id)
    progress = rollout.custom_status if rollout and isinstance(rollout.custom_status, dict) else {}
    if progress.get("stage") in ACTIONS_BY_STAGE:
        await client.raise_event(rollout_id, ACTION_EVENT, {"action": SUPERSEDE, "by": reason})


def _status_url(req: func.HttpRequest, instance_id: str) -> str:
    base = req.url.split("/api/", 1)[0]
    return f"{base}/api/deployments/{quote(instance_id, safe='')}"


@bp.blob_trigger(arg_name="marker", path=MARKER_PATH, connection=ADAPTERS_CONNECTION, source=func.BlobSource.EVENT_GRID)
@bp.durable_client_input(client_name="client")
async def on_adapter_uploaded(marker: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    """An adapter upload completed: let the app's reconciler pick the newest accepted adapter."""
    parts = (marker.name or "").split("/")  # <container>/<app>/<adapter>/_COMPLETE, nothing deeper
    if len(parts) != 4 or parts[-1] != "_COMPLETE":
        log.warning("ignoring blob %r: not an adapter completion marker", marker.name)
        return
    app = parts[1]
    if not APP_NAME_PATTERN.fullmatch(app):
        log.warning("ignoring upload %r: %r is not a valid app name", marker.name, app)
        return
    try:
        await asyncio.to_thread(services().records.ingest, app)  # the record exists before anyone asks
    except Exception:  # noqa: BLE001 - storage hiccup: the reconciler's own pass makes the record
        log.warning("could not record upload %r now; the reconciler will", marker.name, exc_info=True)
    instance_id = await wake_reconciler(client, app, f"upload {parts[-2]}", newer=True)
    log.info("adapter upload %r recorded; reconciler %s woken", parts[-2], instance_id)


@bp.timer_trigger(arg_name="timer", schedule=HEAL_SCHEDULE)
@bp.durable_client_input(client_name="client")
async def heal_reconcilers(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Wake every app's reconciler: the level-triggered safety net under the blob trigger."""
    apps = await asyncio.to_thread(services().records.list_apps)
    for app in apps:
        await wake_reconciler(client, app, "heal timer", newer=True)  # an upload whose event was lost
    log.info("heal timer woke %d reconcilers", len(apps))


@bp.route(route="apps/{app}/deployments", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def start_deployment(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Deploy an adapter already in the store: body {"adapter": name, "force_restart": bool}."""
    app = app_name(req)
    body = json_body(req)
    adapter = body.get("adapter")
    if not isinstance(adapter, str) or not adapter:
        raise BadRequest("'adapter' (the stored adapter's name) is required")
    force = body.get("force_restart", False)
    if not isinstance(force, bool):
        raise BadRequest("'force_restart' must be true or false")
    try:
        check_name("adapter", adapter)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return await request_deployment(req, client, app, adapter, force)


async def request_deployment(req: func.HttpRequest, client: df.DurableOrchestrationClient, app: str, adapter: str,
                             force_restart: bool = False, expect_sha256: str | None = None, **extra: Any
                             ) -> func.HttpResponse:
    """Record a deploy request of a stored adapter (`expect_sha256`: only while the store holds that content;
    `extra`: more fields for the record and the answer) and wake the reconciler: 202 with the record's id and
    status URL. 409 while the app is being deleted."""
    records = services().records
    deleting = await asyncio.to_thread(records.deletion, app)
    if deleting is not None:
        raise BadRequest(f"app {app!r} is being deleted ({deleting.get('id')}); deploy again once that ended", 409)
    record = await asyncio.to_thread(records.create_request, app, adapter, force_restart, expect_sha256, **extra)
    await wake_reconciler(client, app, f"deploy request {record['id']}", newer=True)
    url = _status_url(req, record["id"])
    return json_response({"id": record["id"], "app": app, "adapter": adapter, **extra, "status_url": url}, 202,
                         {"Location": url})


@answers_bad_requests
async def _start(req: func.HttpRequest, client: df.DurableOrchestrationClient, orchestrator: str) -> func.HttpResponse:
    app = app_name(req)
    instance_id = f"{orchestrator}-{app}.{stamp(datetime.now(UTC))}"
    payload = {"app": app, "timing": RolloutTiming.from_env().to_dict()}
    await client.start_new(orchestrator, instance_id, payload)
    url = _status_url(req, instance_id)
    return json_response({"id": instance_id, "app": app, "status_url": url}, 202, {"Location": url})


@bp.route(route="apps/{app}/provision", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def start_provisioning(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Create or update the app's platform resources (idempotent)."""
    return await _start(req, client, PROVISION_ORCHESTRATOR)


@bp.route(route="apps/{app}/restart", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def start_restart(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """New revision / replica restart of the app, then wait until it serves the manifest's version."""
    return await _start(req, client, RESTART_ORCHESTRATOR)
