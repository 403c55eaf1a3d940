"""Durable activities of progressive delivery: the policy a rollout follows, the replicas' metrics for a canary, the
decisions people sent to a rollout (kept by the actions API, `DeploymentRecords.add_decision`).

`read_policy` answers `{ok: false, code: policy_invalid, cause: platform}` for a policy that does not parse (the
app's blob or the `ROLLOUT_POLICY` setting): a configuration error, not retried, and the rollout never runs
ungated because of it. Storage faults raise, for the activity retry.
"""

from __future__ import annotations

import os
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity
from activities.replica_reports import replica_metrics
from activities.rollout_policy import PolicyError, effective_policy, read_app_policy
from activities.services import services

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload", activity=Activity.READ_POLICY)
def read_policy(payload: dict) -> dict[str, Any]:
    svc = services()
    try:
        policy, source = effective_policy(read_app_policy(svc.store.container, payload["app"]), os.environ)
    except PolicyError as exc:
        return {"ok": False, "code": "policy_invalid", "reason": f"policy_invalid: {exc}", "cause": "platform"}
    return {"ok": True, "policy": policy.to_dict() if policy else None, "source": source}


@bp.activity_trigger(input_name="payload", activity=Activity.REPLICA_METRICS)
def read_replica_metrics(payload: dict) -> dict[str, Any]:
    return {"ok": True, "metrics": replica_metrics(services().target, payload["app"])}


@bp.activity_trigger(input_name="payload", activity=Activity.READ_DECISIONS)
def read_decisions(payload: dict) -> dict[str, Any]:
    return {"ok": True, "decisions": services().records.decisions(payload["app"], payload["id"])}
