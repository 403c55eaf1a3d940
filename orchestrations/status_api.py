"""The status API: what callers poll while rollouts run.

Covers `GET /api/deployments/{id}` (stage, stage history with times, reason on failure — any instance id our
starters returned), `GET /api/apps/{app}/deployments` (recent rollouts, newest first), `GET /api/apps/{app}`
(desired vs served adapter, endpoint, replicas, last rollout, the template's inference.config.json shape) and
`GET /api/apps` (apps with uploads or a reconciler).
"""

from __future__ import annotations

import asyncio
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from activities.services import services

from .http_util import APP_NAME, answers_bad_requests, app_name, error_response, json_response
from .reconcile import RECONCILE_ORCHESTRATOR, reconcile_instance_id
from .rollout import ROLLOUT_ORCHESTRATOR

bp = df.Blueprint()

RECENT_LIMIT = 50


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


async def app_rollouts(client: df.DurableOrchestrationClient, app: str) -> list[dict[str, Any]]:
    """The app's rollouts, newest first."""
    statuses = await client.get_status_by(instance_id_prefix=f"{app}.")
    rollouts = [describe_instance(s) for s in statuses if s.name == ROLLOUT_ORCHESTRATOR]
    rollouts.sort(key=lambda r: r["created_at"] or "", reverse=True)
    return rollouts[:RECENT_LIMIT]


@bp.route(route="deployments/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_deployment(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """One rollout (or provision / restart) by id."""
    instance_id = req.route_params.get("id", "")
    status = await client.get_status(instance_id)
    if status:
        return json_response(describe_instance(status))
    pending = await asyncio.to_thread(_pending_request, instance_id)
    if pending:
        return json_response(pending)
    return error_response(f"no deployment {instance_id!r}", 404)


def _pending_request(deployment_id: str) -> dict[str, Any] | None:
    """A deploy request the reconciler has not started yet (ids are `<app>.<time>`)."""
    app = deployment_id.split(".", 1)[0]
    if not APP_NAME.match(app):
        return None
    request = services().desired.last_request(app)
    if request is None or request.request_id != deployment_id:
        return None
    return {"id": deployment_id, "app": app, "adapter": request.adapter, "kind": ROLLOUT_ORCHESTRATOR,
            "stage": "received", "runtime_status": "Pending", "history": [], "created_at": request.requested_at}


@bp.route(route="apps/{app}/deployments", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def list_deployments(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Recent rollouts of one app, newest first."""
    app = app_name(req)
    return json_response({"app": app, "deployments": await app_rollouts(client, app)})


@bp.route(route="apps/{app}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def get_app(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Desired vs served adapter, endpoint, replicas and the last rollout of one app."""
    app = app_name(req)
    svc = services()
    desired, served, platform = await asyncio.gather(
        asyncio.to_thread(svc.desired.resolve, app),
        asyncio.to_thread(svc.read_manifest, app),
        asyncio.to_thread(svc.apps.describe, app),
    )
    rollouts = await app_rollouts(client, app)
    reconciler = await client.get_status(reconcile_instance_id(app))
    active = (served or {}).get("active")
    return json_response({
        "app": app,
        "desired": desired,
        "served": {"adapter": active, **((served or {}).get("adapters", {}).get(active) or {})} if served else None,
        "manifest": served,
        "endpoint": platform.endpoint,
        "replicas": platform.replicas,
        "running": platform.running,
        "revision": platform.revision,
        "last_rollout": rollouts[0] if rollouts else None,
        "reconciler": describe_instance(reconciler) if reconciler else None,
        "inference_config": svc.apps.inference_config(app, platform),
    })


@bp.route(route="apps", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def list_apps(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Apps known from uploads or from a running reconciler."""
    stored = await asyncio.to_thread(services().desired.list_apps)
    reconcilers = await client.get_status_by(instance_id_prefix="reconcile-")
    running = {s.instance_id.removeprefix("reconcile-") for s in reconcilers if s.name == RECONCILE_ORCHESTRATOR}
    return json_response({"apps": sorted(set(stored) | running)})
