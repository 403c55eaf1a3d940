"""HTTP API of progressive delivery: a person's decisions on a waiting rollout, and an app's rollout policy.

- `POST /api/deployments/{id}/{action}` (`promote`, `abort`, `approve`, `reject`; body optional `{"by": "name"}`):
  202 when the rollout is in a stage that takes the action (`progressive.ACTIONS_BY_STAGE`); 404 unknown id;
  409 naming the stage and the actions it takes otherwise (ended, not started, another stage). The decision is
  kept as its own blob beside the record (`DeploymentRecords.add_decision`), then a Durable external event wakes
  the rollout, which reads the decisions it has not seen: a wake-up lost or repeated never loses or repeats one.
- `GET /api/apps/{app}/policy`: the app's own policy (or null), the policy its rollouts follow and where that
  comes from (`app`, `setting`, `none`); `PUT` stores a policy (400 naming the field when it does not parse);
  `DELETE` removes the app's own policy. 404 for an app that does not exist.
"""

from __future__ import annotations

import asyncio
import os

import azure.durable_functions as df
import azure.functions as func

from activities.records import TERMINAL
from activities.rollout_policy import (
    PolicyError,
    RolloutPolicy,
    effective_policy,
    read_app_policy,
    write_app_policy,
)
from activities.services import services

from .http_util import BadRequest, answers_bad_requests, app_name, error_response, json_response
from .progressive import ACTION_EVENT, ACTIONS_BY_STAGE
from .status_api import _find_record, app_presence

bp = df.Blueprint()

ACTIONS = ("promote", "abort", "approve", "reject")
MAX_BY_CHARS = 100


def _by(req: func.HttpRequest) -> str | None:
    raw = req.get_body()
    if not raw:
        return None
    try:
        body = req.get_json()
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    by = body.get("by") if isinstance(body, dict) else None
    if by is not None and (not isinstance(by, str) or not 0 < len(by) <= MAX_BY_CHARS or not by.isprintable()):
        raise BadRequest(f"'by' must be a printable string of 1 to {MAX_BY_CHARS} characters")
    return by


@bp.route(route="deployments/{id}/{action}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def rollout_action(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Send a person's decision to the rollout of deployment `id`."""
    deployment_id, action = req.route_params.get("id", ""), req.route_params.get("action", "")
    if action not in ACTIONS:
        return error_response(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", 404)
    by = _by(req)
    record = await _find_record(deployment_id)
    if record is None:
        return error_response(f"no deployment {deployment_id!r}", 404)
    stage = record.get("stage")
    if stage not in TERMINAL and record.get("instance_id") and stage != "retrying":
        status = await client.get_status(record["instance_id"])
        progress = status.custom_status if status and isinstance(status.custom_status, dict) else {}
        stage = progress.get("stage") or stage
    accepted = ACTIONS_BY_STAGE.get(stage, ())
    if action not in accepted:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no action"
        return json_response({"error": {"message": f"deployment {deployment_id} is {stage}: {takes}", "status": 409},
                              "stage": stage, "accepts": list(accepted)}, 409)
    app = record["app"]
    await asyncio.to_thread(services().records.add_decision, app, deployment_id, action, by)
    await client.raise_event(record["instance_id"], ACTION_EVENT, {"action": action, "by": by})  # the wake-up
    return json_response({"id": deployment_id, "action": action, "stage": stage, "by": by}, 202)


async def _existing_app(req: func.HttpRequest) -> str:
    app = app_name(req)
    presence = await app_presence(app)
    if not any(presence.values()):
        raise LookupError(f"no app {app!r}")
    return app


@bp.route(route="apps/{app}/policy", methods=["GET", "PUT", "DELETE"], auth_level=func.AuthLevel.FUNCTION)
@answers_bad_requests
async def app_policy(req: func.HttpRequest) -> func.HttpResponse:
    """Read, set or remove the app's own rollout policy."""
    app = await _existing_app(req)
    container = services().store.container
    if req.method == "PUT":
        try:
            policy = RolloutPolicy.from_json(req.get_body() or b"", "policy")
        except PolicyError as exc:
            raise BadRequest(str(exc)) from exc
        await asyncio.to_thread(write_app_policy, container, app, policy)
    elif req.method == "DELETE":
        await asyncio.to_thread(write_app_policy, container, app, None)
    try:
        own = await asyncio.to_thread(read_app_policy, container, app)
        effective, source = effective_policy(own, os.environ)
    except PolicyError as exc:
        return error_response(f"policy_invalid: {exc}", 500)
    return json_response({"app": app, "policy": own.to_dict() if own else None,
                          "effective": effective.to_dict() if effective else None, "source": source})
