"""Provision and restart orchestrations (the template's "Provision Azure Container Apps" and "Deploy for
inference" commands), each step an idempotent activity: it updates what exists by name and creates what is
missing, so running it twice writes nothing the second time."""

from __future__ import annotations

import azure.durable_functions as df

from activities.catalog import Activity

from .health_gate import serves, wait_until_serving
from .policies import IO_RETRY, RolloutTiming

bp = df.Blueprint()

PROVISION_ORCHESTRATOR = "provision"
RESTART_ORCHESTRATOR = "restart"


@bp.orchestration_trigger(context_name="context", orchestration=PROVISION_ORCHESTRATOR)
def provision(context: df.DurableOrchestrationContext):
    """Run every provisioning step of the app's platform in order; report what each step did."""
    app = context.get_input()["app"]
    retry = IO_RETRY.options()
    plan = yield context.call_activity_with_retry(Activity.PLAN_PROVISIONING, retry, {"app": app})
    done: list[dict] = []
    for step in plan["steps"]:
        context.set_custom_status({"app": app, "step": step, "done": done})
        result = yield context.call_activity_with_retry(Activity.PROVISION_STEP, retry, {"app": app, "step": step})
        done.append({"step": step, "action": result.get("action")})
        if result.get("ok") is False:
            outcome = {"app": app, "state": "failed", "steps": done, "reason": result.get("reason")}
            context.set_custom_status(outcome)
            return outcome
    outcome = {"app": app, "state": "provisioned", "steps": done, "inference_config": result.get("outcome") if done else None}
    context.set_custom_status(outcome)
    return outcome


@bp.orchestration_trigger(context_name="context", orchestration=RESTART_ORCHESTRATOR)
def restart(context: df.DurableOrchestrationContext):
    """New revision / replica restart, then wait until the endpoint is ready with the manifest's version."""
    data = context.get_input()
    app = data["app"]
    timing = RolloutTiming.from_dict(data.get("timing"))
    retry = IO_RETRY.options()
    manifest = yield context.call_activity_with_retry(Activity.READ_MANIFEST, retry, {"app": app})
    expect = None
    if manifest and manifest.get("active"):
        expect = manifest["adapters"][manifest["active"]]["version"]
    context.set_custom_status({"app": app, "state": "restarting"})
    restarted = yield context.call_activity_with_retry(Activity.RESTART_APP, retry, {"app": app})
    if restarted.get("ok") is False:
        outcome = {"app": app, "state": "failed", "reason": restarted.get("reason")}
        context.set_custom_status(outcome)
        return outcome
    probe = yield from wait_until_serving(context, app, expect, timing.restart_timeout_s, timing.poll_interval_s)
    ready = serves(probe, expect)
    outcome = {"app": app, "state": "ready" if ready else "failed", "revision": restarted.get("revision"),
               "served_version": probe.get("served_version"), "reason": None if ready else probe.get("error")}
    context.set_custom_status(outcome)
    return outcome
