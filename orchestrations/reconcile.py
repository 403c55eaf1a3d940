"""Reconcile orchestration: one per app (instance id `reconcile-<app>`), level-triggered.

Each pass reads the desired adapter (the newest accepted upload or deploy request) and the served manifest; if
they differ it runs one rollout as a sub-orchestration (so one rollout at a time per app), then looks again.
With nothing to do it waits for a `wake` event (sent by the blob trigger and the HTTP starters) or the heal
timer, then continues as new, which keeps its history short. Content already live, or already rejected, is
not rolled out again: the same sha256 uploaded twice is one deployment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity

from .policies import IO_RETRY, RolloutTiming
from .rollout import ROLLOUT_ORCHESTRATOR, RolloutRequest

bp = df.Blueprint()

RECONCILE_ORCHESTRATOR = "reconcile"
WAKE_EVENT = "wake"
#: Rejected contents remembered per app (so a bad upload is not retried in a loop).
REJECTED_MEMORY = 32


def reconcile_instance_id(app: str) -> str:
    return f"reconcile-{app}"


def deployment_id(app: str, started: datetime) -> str:
    """Rollout id `<app>.<time>`: app names have no '.', so `<app>.` lists exactly one app's rollouts."""
    return f"{app}.{started:%Y%m%dT%H%M%S%f}"


@dataclass
class ReconcileState:
    """Carried across `continue_as_new`."""

    app: str
    timing: dict[str, Any] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # sha256s whose rollout failed or rolled back
    handled_requests: list[str] = field(default_factory=list)  # accepted_at of explicit deploy requests done
    rollouts: int = 0


def _needs_rollout(state: ReconcileState, desired: dict | None, served: dict | None) -> bool:
    if not desired:
        return False
    explicit = desired.get("request_id")
    if explicit:  # an explicit deploy request runs once even for content already live
        return explicit not in state.handled_requests
    if desired["sha256"] in state.rejected:
        return False
    active = (served or {}).get("active")
    entry = (served or {}).get("adapters", {}).get(active or "", {})
    return not (active == desired["adapter"] and entry.get("sha256") == desired["sha256"])


@bp.orchestration_trigger(context_name="context", orchestration=RECONCILE_ORCHESTRATOR)
def reconcile(context: df.DurableOrchestrationContext):
    """Converge one app's served adapter on its desired adapter, one rollout at a time, forever."""
    state = ReconcileState(**context.get_input())
    timing = RolloutTiming.from_dict(state.timing)
    retry = IO_RETRY.options()
    context.set_custom_status({"app": state.app, "phase": "checking", "rollouts": state.rollouts})
    error = None
    try:
        desired = yield context.call_activity_with_retry(Activity.RESOLVE_DESIRED, retry, {"app": state.app})
        served = yield context.call_activity_with_retry(Activity.READ_MANIFEST, retry, {"app": state.app})
    except Exception as exc:  # noqa: BLE001 - storage still failing after retries: wait and look again, do not die
        desired, served, error = None, None, str(exc)
    if _needs_rollout(state, desired, served):
        explicit = desired.get("request_id")
        request = RolloutRequest(
            deployment_id=explicit or deployment_id(state.app, context.current_utc_datetime),
            app=state.app,
            adapter=desired["adapter"],
            sha256=desired["sha256"],
            force_restart=bool(desired.get("force_restart")),
            timing=state.timing,
        )
        context.set_custom_status({"app": state.app, "phase": "rolling_out", "deployment_id": request.deployment_id})
        try:
            outcome = yield context.call_sub_orchestrator(ROLLOUT_ORCHESTRATOR, request.to_dict(), request.deployment_id)
        except Exception as exc:  # noqa: BLE001 - the rollout itself crashed: count it as rejected
            outcome = {"stage": "failed", "reason": str(exc)}
        state.rollouts += 1
        if explicit:
            state.handled_requests = (state.handled_requests + [explicit])[-REJECTED_MEMORY:]
        if outcome.get("stage") != "live":
            state.rejected = (state.rejected + [desired["sha256"]])[-REJECTED_MEMORY:]
    else:
        context.set_custom_status({"app": state.app, "phase": "error" if error else "idle", "reason": error,
                                   "rollouts": state.rollouts})
        wake = context.wait_for_external_event(WAKE_EVENT)
        heal = context.create_timer(context.current_utc_datetime + timedelta(seconds=timing.heal_interval_s))
        winner = yield context.task_any([wake, heal])
        if winner is wake and not heal.is_completed:
            heal.cancel()
    context.continue_as_new(asdict(state))
    return None
