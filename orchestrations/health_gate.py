"""Health gate for orchestrators: probe until the endpoint serves a version, bounded by orchestration time.

`wait_until_serving` probes with backoff (the poll interval, ×1.5 per probe, up to `MAX_BACKOFF_S`, never sleeping
past the deadline) and stops when the endpoint serves the version, when a probe says the engine refused the
adapter (`refused`), or when the deadline (from `context.current_utc_datetime`, replay-safe) has passed. The
first `PROBES_PER_EXECUTION` probes run in the caller; a longer wait goes on in the `wait_serving`
sub-orchestration, which continues as new every `PROBES_PER_EXECUTION` probes, so no history grows unbounded.
With `replicas` (`{"manifest_updated_at"}` of the manifest written) the wait also needs every replica the platform
lists to report the version (`replicas_agree`; the rule: `activities.replica_reports.replica_verdict`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity

from .policies import IO_RETRY

bp = df.Blueprint()

WAIT_SERVING_ORCHESTRATOR = "wait_serving"
BACKOFF_FACTOR = 1.5
MAX_BACKOFF_S = 10.0
PROBES_PER_EXECUTION = 10


def serves(probe: dict, version: str | None) -> bool:
    """The probe saw a ready endpoint serving `version` (None: the base model)."""
    return bool(probe.get("ready")) and probe.get("served_version") == version


def replicas_agree(probe: dict) -> bool:
    """The probe's replica verdict says every listed replica reports the version."""
    return (probe.get("replicas") or {}).get("state") == "ready"


def _settled(probe: dict, version: str | None, replicas: dict | None) -> bool:
    return serves(probe, version) and (replicas is None or replicas_agree(probe))


@dataclass
class _Wait:
    """A wait in progress; JSON-safe, carried across `continue_as_new`."""

    app: str
    version: str | None
    started: str  # ISO orchestration times
    deadline: str
    delay_s: float
    probes: int = 0
    replicas: dict | None = None  # ask for the replica verdict too (the probe activity's `replicas` input)

    def run(self, context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict | None]:
        """Up to `PROBES_PER_EXECUTION` probes: the outcome, or None when the wait goes on."""
        deadline = datetime.fromisoformat(self.deadline)
        for _ in range(PROBES_PER_EXECUTION):
            payload = {"app": self.app, "expect_version": self.version, "smoke": False}
            if self.replicas is not None:
                payload["replicas"] = self.replicas
            probe = yield context.call_activity_with_retry(Activity.PROBE_ENDPOINT, IO_RETRY.options(), payload)
            self.probes += 1
            now = context.current_utc_datetime
            if _settled(probe, self.version, self.replicas) or probe.get("refused") or now >= deadline:
                waited = (now - datetime.fromisoformat(self.started)).total_seconds()
                return {"refused": None, **probe, "probes": self.probes, "waited_s": round(waited, 3)}
            yield context.create_timer(min(now + timedelta(seconds=self.delay_s), deadline))
            self.delay_s = min(self.delay_s * BACKOFF_FACTOR, max(MAX_BACKOFF_S, self.delay_s))
        return None


def wait_until_serving(
    context: df.DurableOrchestrationContext, app: str, version: str | None, timeout_s: float, interval_s: float,
    replicas: dict | None = None,
) -> Generator[Any, Any, dict]:
    """Probe the app's endpoint until it serves `version` (and, with `replicas`, every listed replica reports
    it), it refuses the adapter, or `timeout_s` has passed.

    Returns the last probe (`ready`, `served_version`, `reply`, `error`, `refused`) plus `probes` (how many ran)
    and `waited_s` (orchestration time since the wait began). At least one probe always runs.
    """
    now = context.current_utc_datetime
    wait = _Wait(app, version, now.isoformat(), (now + timedelta(seconds=timeout_s)).isoformat(), interval_s,
                 replicas=replicas)
    outcome = yield from wait.run(context)
    if outcome is None:
        child_id = f"{context.instance_id}:{WAIT_SERVING_ORCHESTRATOR}:{context.new_uuid()}"
        outcome = yield context.call_sub_orchestrator(WAIT_SERVING_ORCHESTRATOR, asdict(wait), child_id)
    return outcome


@bp.orchestration_trigger(context_name="context", orchestration=WAIT_SERVING_ORCHESTRATOR)
def wait_serving(context: df.DurableOrchestrationContext):
    """The long part of `wait_until_serving`; continues as new every `PROBES_PER_EXECUTION` probes."""
    wait = _Wait(**context.get_input())
    outcome = yield from wait.run(context)
    if outcome is None:
        context.continue_as_new(asdict(wait))
    return outcome
