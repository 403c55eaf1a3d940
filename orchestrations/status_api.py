"""The status API: what callers poll while rollouts run. It reads the deployment records (activities/records.py),
never Durable instance listings (the real host pages those at 100 and the Python SDK does not follow them).

Covers `GET /api/deployments/{id}` (a record: stage, stage history with times, reason and cause on failure,
`superseded_by`; provision / restart / delete ids are Durable instances, read by id), `GET /api/apps/{app}/deployments`
(`?limit=`, newest records first), `GET /api/apps/{app}` (open and served adapter, endpoint, replicas, what each
replica reports (`replicas_observed`, with `stale`; docs/rollouts.md), last record, the template's
inference.config.json shape; 404 for an app that does not exist, see `app_presence`; 503
when the platform cannot say) and `GET /api/apps` (apps in the upload container; `{"apps": []}` before the first
upload, the container made on the way). An open record shows its rollout's current stage, read from the rollout
instance by id.

An app exists when any of these holds (`app_presence`): the platform has it (a local server's state, a container
app), the upload container holds anything of it (uploads, deployment records, a deletion marker), or its store
root has a manifest. Provisioning or a first upload / deploy request creates it; `DELETE /api/apps/{app}`
(orchestrations/lifecycle.py) removes all three.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from activities.platform.base import AppState
from activities.records import TERMINAL, app_of, is_upload_id
from activities.replica_reports import replicas_observed
from activities.services import services
from activities.validation import APP_NAME_PATTERN

from .http_util import BadRequest, answers_bad_requests, app_name, error_response, json_response
from .reconcile import reconcile_instance_id
from .rollout_status import OUTCOME_FIELDS, record_history

bp = df.Blueprint()

RECENT_LIMIT = 50
MAX_LIMIT = 200
#: Ids of the provision, restart and delete orchestrations the starters return (Durable instances, read by id).
_INSTANCE_ID = re.compile(rf"(?:provision|restart|delete)-{APP_NAME_PATTERN.pattern}\.\d{{8}}T\d{{12}}")
#: What an open record takes from its running rollout's custom status.
_LIVE_FIELDS = ("stage", "history", *OUTCOME_FIELDS)


def describe_instance(status: df.DurableOrchestrationStatus) -> dict[str, Any]:
    """One orchestration as the API shows it: its own record (custom status) plus the runtime's view."""
    custom = status.custom_status if isinstance(status.custom_status, dict) else {}
    output = status.output if isinstance(status.output, dict) else {}
    record = {**custom, **output} if output else dict(custom)
    record.update(
        id=status.instance_id,
        kind=status.name,
        runtime_status=status.runtime_status.name if status.runtime_status else None,
        created_at=status.created_time.isoformat() if status.created_time else None,
        updated_at=status.last_updated_time.isoformat() if status.last_updated_time else None,
    )
    if status.runtime_status == df.OrchestrationRuntimeStatus.Failed and not record.get("reason"):
        record["reason"] = str(status.output)
    return record


async def _with_progress(client: df.DurableOrchestrationClient, record: dict[str, Any]) -> dict[str, Any]:
    """An open record with its rollout's current stage and history (a terminal record is final as it is, and a
    `retrying` one shows its own reason until the next attempt starts)."""
    if record.get("stage") in TERMINAL or record.get("stage") == "retrying" or not record.get("instance_id"):
        return record
    status = await client.get_status(record["instance_id"])
    progress = status.custom_status if status and isinstance(status.custom_status, dict) else {}
    merged = {**record, **{k: progress[k] for k in _LIVE_FIELDS if progress.get(k) is not None}}
    if progress.get("history"):
        merged["history"] = record_history(record, progress["history"])
    if merged.get("stage") in TERMINAL:  # the rollout ended; the reconciler has not written the record yet
        merged["stage"] = "finishing"
    return merged


async def app_rollouts(client: df.DurableOrchestrationClient, app: str, limit: int = RECENT_LIMIT) -> list[dict]:
    """The app's newest deployment records, newest first."""
    records = await asyncio.to_thread(services().records.recent, app, limit)
    return list(await asyncio.gather(*(_with_progress(client, r) for r in records)))


async def _find_record(deployment_id: str) -> dict[str, Any] | None:
    """A record by id (ids of any other shape: None, with no storage call); an upload's record is made on the spot
    if its marker was not seen yet."""
    app = app_of(deployment_id)
    if not app:
        return None
    records = services().records
    record = await asyncio.to_thread(records.get, app, deployment_id)
    if record is None and is_upload_id(deployment_id):
        await asyncio.to_thread(records.ingest, app)
        record = await asyncio.to_thread(records.get, app, deployment_id)
    return record


@bp.route(route="deployments/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def get_deployment(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """One deployment record (or provision / restart instance) by id."""
    deployment_id = req.route_params.get("id", "")
    record = await _find_record(deployment_id)
    if record is not None:
        return json_response(await _with_progress(client, record))
    status = await client.get_status(deployment_id) if _INSTANCE_ID.fullmatch(deployment_id) else None
    if status and status.runtime_status is not None:
        return json_response(describe_instance(status))
    return error_response(f"no deployment {deployment_id!r}", 404)


def _limit(req: func.HttpRequest) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return RECENT_LIMIT
    if not (raw.isascii() and raw.isdecimal()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"'limit' must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


@bp.route(route="apps/{app}/deployments", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def list_deployments(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """The app's newest deployment records, newest first."""
    app = app_name(req)
    return json_response({"app": app, "deployments": await app_rollouts(client, app, _limit(req))})


async def app_presence(app: str, platform: AppState | None = None, store: bool | None = None) -> dict[str, bool]:
    """Where the app is found: `platform` (a server / container app), `uploads` (anything in the upload container),
    `store` (a manifest in its store root). The app exists when any is true. A platform that cannot answer raises
    (`PlatformError`: the route answers 503)."""
    svc = services()

    async def platform_exists() -> bool:
        state = platform if platform is not None else await asyncio.to_thread(svc.apps.describe, app)
        return bool(state.exists)

    async def stored() -> bool:
        return store if store is not None else (await asyncio.to_thread(_manifest, app))[0] is not None

    on_platform, uploads, staged = await asyncio.gather(
        platform_exists(), asyncio.to_thread(svc.records.has_app, app), stored())
    return {"platform": on_platform, "uploads": uploads, "store": staged}


@bp.route(route="apps/{app}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def get_app(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Open and served adapter, endpoint, replicas and the newest deployment record of one app (404: no such app)."""
    app = app_name(req)
    svc = services()
    (served, manifest_error), (observed, observed_error), platform, deleting = await asyncio.gather(
        asyncio.to_thread(_manifest, app),
        asyncio.to_thread(_replicas_observed, app),
        asyncio.to_thread(svc.apps.describe, app),
        asyncio.to_thread(svc.records.deletion, app),
    )
    presence = await app_presence(app, platform, served is not None)
    if not any(presence.values()):
        raise LookupError(f"no app {app!r}: no platform app, no uploads or deployment records, nothing staged "
                          "(a first upload, deploy request or provisioning creates it)")
    rollouts = await app_rollouts(client, app, 20)
    reconciler = await client.get_status(reconcile_instance_id(app))
    active = (served or {}).get("active")
    return json_response({
        "app": app,
        "exists": True,
        "presence": presence,
        "deleting": deleting,
        "open": [r for r in rollouts if r.get("stage") not in TERMINAL],
        "served": {"adapter": active, **((served or {}).get("adapters", {}).get(active) or {})} if served else None,
        "manifest": served,
        "manifest_error": manifest_error,
        "endpoint": platform.endpoint,
        "replicas": platform.replicas,
        "running": platform.running,
        "revision": platform.revision,
        "replicas_observed": observed,
        "replicas_observed_error": observed_error,
        "last_rollout": rollouts[0] if rollouts else None,
        "reconciler": describe_instance(reconciler) if reconciler and reconciler.runtime_status else None,
        "inference_config": svc.apps.inference_config(app, platform),
    })


def _manifest(app: str) -> tuple[dict[str, Any] | None, str | None]:
    """The app's manifest, or why it cannot be read (the status API reports it; it never answers 500 for it)."""
    try:
        return services().read_manifest(app), None
    except Exception as exc:  # noqa: BLE001 - storage or content: reported in the answer, never a 500
        return None, f"{type(exc).__name__}: {exc}"


def _replicas_observed(app: str) -> tuple[list[dict[str, Any]], str | None]:
    """Each replica's own report (activities/replica_reports.py), or why the folder cannot be listed (reported in
    the answer, never a 500; a damaged file is one entry saying so)."""
    try:
        return replicas_observed(services().target, app), None
    except Exception as exc:  # noqa: BLE001 - storage: reported in the answer, never a 500
        return [], f"{type(exc).__name__}: {exc}"


@bp.route(route="apps", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@answers_bad_requests
async def list_apps(req: func.HttpRequest) -> func.HttpResponse:
    """Apps with anything in the upload container (`{"apps": []}` on a fresh host: a missing container is made)."""
    return json_response({"apps": await asyncio.to_thread(services().records.list_apps)})
