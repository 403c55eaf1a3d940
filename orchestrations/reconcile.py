"""Reconcile orchestration: one per app (instance id `reconcile-<app>`), driven by the app's deployment records.

Each pass makes records for new uploads (`activities.records`), then takes the open records in arrival order:
the newest wins and every older open record ends `superseded` (naming the winner). The winner is rolled out as
a sub-orchestration (one rollout at a time per app) and its record gets the outcome: `live`, `rolled_back` or
`failed`. A rollout that failed for a transient cause (storage, platform, timeout) is retried with backoff
(`retrying`, up to `MAX_ATTEMPTS`); content failures are final for that record, and a new upload or deploy
request of the same content tries again. An upload of the content already live ends `live` at once.

With nothing open it heals (the platform restarts a server that died), then waits for a `wake` event (blob
trigger, HTTP starters) or the heal timer; after a storage failure it looks again after `retry_base_s`.
Every pass ends with `continue_as_new`, which keeps the history short.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity

from .policies import IO_RETRY, RolloutTiming
from .rollout import ROLLOUT_ORCHESTRATOR, RolloutRequest
from .rollout_status import OUTCOME_FIELDS, record_history

bp = df.Blueprint()

RECONCILE_ORCHESTRATOR = "reconcile"
WAKE_EVENT = "wake"
#: Attempts of one record's rollout when it keeps failing for a transient cause (retried after
#: `RolloutTiming.retry_base_s`, ×4 per attempt; the same wait follows a failure of the reconciler's own reads).
MAX_ATTEMPTS = 4


def _utc(when: datetime) -> datetime:
    """An aware UTC time (the orchestration clock may be naive UTC)."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def reconcile_instance_id(app: str) -> str:
    return f"reconcile-{app}"


@dataclass
class ReconcileState:
    """Carried across `continue_as_new`."""

    app: str
    timing: dict[str, Any] = field(default_factory=dict)
    rollouts: int = 0
    heals: int = 0
    last_heal: dict[str, Any] | None = None  # {at, action, reason} of the newest restart the heal pass made


def _already_live(record: dict[str, Any], served: dict | None) -> bool:
    """An upload (not an explicit request, which always runs) of exactly the content being served."""
    if record.get("source") != "upload" or record.get("attempts"):
        return False
    active = (served or {}).get("active")
    entry = (served or {}).get("adapters", {}).get(active or "", {})
    return active == record["adapter"] and entry.get("sha256") == record.get("sha256")


class _Pass:
    """One reconcile pass; generator methods to `yield from`."""

    def __init__(self, context: df.DurableOrchestrationContext, state: ReconcileState) -> None:
        self.ctx = context
        self.state = state
        self.timing = RolloutTiming.from_dict(state.timing)
        self.retry = IO_RETRY.options()

    def activity(self, name: Activity, **payload: Any) -> Any:
        return self.ctx.call_activity_with_retry(name, self.retry, {"app": self.state.app, **payload})

    def show(self, phase: str, **extra: Any) -> None:
        self.ctx.set_custom_status({"app": self.state.app, "phase": phase, "rollouts": self.state.rollouts,
                                    "heals": self.state.heals, "last_heal": self.state.last_heal, **extra})

    def update(self, record: dict[str, Any], **changes: Any) -> Any:
        return self.activity(Activity.UPDATE_RECORD, id=record["id"], changes=changes)

    def run(self) -> Any:
        self.show("checking")
        try:
            open_records = yield self.activity(Activity.INGEST_RECORDS)
        except Exception as exc:  # noqa: BLE001 - storage still failing after retries: look again soon
            self.show("error", reason=str(exc))
            yield from self.wait(self.timing.retry_base_s)
            return
        served = None
        if open_records:
            try:
                served = yield self.activity(Activity.READ_MANIFEST)
            except Exception:  # noqa: BLE001 - unknown: roll out; the rollout's own read reports the fault
                served = None
        if not open_records:
            yield from self.heal()
            self.show("idle")
            yield from self.wait(self.timing.heal_interval_s)
            return
        winner = open_records[-1]
        try:
            for older in open_records[:-1]:
                yield self.update(older, stage="superseded", superseded_by=winner["id"],
                                  reason=f"superseded by {winner['id']} ({winner['adapter']})")
            if _already_live(winner, served):
                yield self.update(winner, stage="live", already_live=True, reason="this content is already live")
                return
            retry_at = _utc(datetime.fromisoformat(winner["retry_at"])) if winner.get("retry_at") else None
            if retry_at and retry_at > _utc(self.ctx.current_utc_datetime):
                self.show("waiting_retry", deployment_id=winner["id"], retry_at=retry_at.isoformat())
                yield from self.wait_until(retry_at)
                return
            yield from self.roll_out(winner)
        except Exception as exc:  # noqa: BLE001 - a record write failed after retries: the next pass redoes it
            self.show("error", reason=str(exc))
            yield from self.wait(self.timing.retry_base_s)

    def roll_out(self, record: dict[str, Any]) -> Any:
        attempt = int(record.get("attempts") or 0) + 1
        instance_id = record["id"] if attempt == 1 else f"{record['id']}~{attempt}"
        yield self.update(record, attempts=attempt, instance_id=instance_id, retry_at=None)
        request = RolloutRequest(
            deployment_id=record["id"], app=self.state.app, adapter=record["adapter"], sha256=record.get("sha256"),
            force_restart=bool(record.get("force_restart")), timing=self.state.timing,
            baseline=record.get("baseline"),
        )
        self.show("rolling_out", deployment_id=record["id"], instance_id=instance_id)
        try:
            outcome = yield self.ctx.call_sub_orchestrator(ROLLOUT_ORCHESTRATOR, request.to_dict(), instance_id)
        except Exception as exc:  # noqa: BLE001 - the rollout orchestration itself failed: a bug, not the content
            outcome = {"stage": "failed", "reason": f"rollout crashed: {exc}", "cause": "transient", "history": []}
        self.state.rollouts += 1
        result = {k: outcome.get(k) for k in OUTCOME_FIELDS if k in outcome}
        result["history"] = record_history(record, outcome.get("history") or [])
        baseline = record.get("baseline") or outcome.get("unrestored")  # the first unrestored manifest is kept
        stage, cause = outcome.get("stage") or "failed", outcome.get("cause")
        if stage != "live" and cause == "transient" and attempt < MAX_ATTEMPTS:
            delay = self.timing.retry_base_s * 4 ** (attempt - 1)
            retry_at = _utc(self.ctx.current_utc_datetime) + timedelta(seconds=delay)
            yield self.update(record, stage="retrying", retry_at=retry_at.isoformat(), baseline=baseline, **result)
            return
        if stage != "live" and cause == "transient":
            result["reason"] = f"gave up after {attempt} attempts: {outcome.get('reason')}"
        if stage == "failed" and outcome.get("unrestored") is not None:  # one last restore before giving up
            try:
                yield self.activity(Activity.WRITE_MANIFEST, manifest=outcome["unrestored"]["manifest"])
                result["reason"] += "; the replaced manifest was written back"
            except Exception:  # noqa: BLE001 - reported in the record
                result["reason"] += "; the replaced manifest could not be written back"
        if cause == "superseded":
            stage = "superseded"
        yield self.update(record, stage=stage, **result)

    def heal(self) -> Any:
        """Let the platform restart the app's server when it died (recorded in the custom status)."""
        try:
            healed = yield self.activity(Activity.HEAL_APP)
        except Exception:  # noqa: BLE001 - healing is best effort; the next pass tries again
            return
        if isinstance(healed, dict) and healed.get("action") not in (None, "none"):
            self.state.heals += 1
            self.state.last_heal = {"at": self.ctx.current_utc_datetime.isoformat(), "action": healed["action"],
                                    "reason": healed.get("reason")}

    def wait(self, seconds: float) -> Any:
        yield from self.wait_until(self.ctx.current_utc_datetime + timedelta(seconds=seconds))

    def wait_until(self, when: datetime) -> Any:
        """Until `when` or a `wake` event, whichever comes first."""
        wake = self.ctx.wait_for_external_event(WAKE_EVENT)
        timer = self.ctx.create_timer(when if self.ctx.current_utc_datetime.tzinfo else when.replace(tzinfo=None))
        winner = yield self.ctx.task_any([wake, timer])
        if winner is wake and not timer.is_completed:
            timer.cancel()


@bp.orchestration_trigger(context_name="context", orchestration=RECONCILE_ORCHESTRATOR)
def reconcile(context: df.DurableOrchestrationContext):
    """Converge one app on its newest deployment record, one rollout at a time, forever."""
    data = dict(context.get_input())
    state = ReconcileState(**{k: v for k, v in data.items() if k in ReconcileState.__dataclass_fields__})
    yield from _Pass(context, state).run()
    context.continue_as_new(asdict(state))
    return None
