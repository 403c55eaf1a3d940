"""Names of the Durable activities (the contract between `orchestrations/` and `activities/functions.py`).

Inputs and outputs are JSON objects. An activity raises only for a fault worth retrying; a permanent failure is
returned as `{"ok": false, "code", "reason", "cause": "content" | "platform"}`. Secrets never pass through inputs
or outputs (they would land in the orchestration history): activities look endpoints and keys up themselves by app name.
"""

from enum import StrEnum


class Activity(StrEnum):
    INGEST_RECORDS = "ingest_records"  # {app} -> [open deployment records, oldest first] (activities.records)
    UPDATE_RECORD = "update_record"  # {app, id, changes} -> the record (a terminal one is never changed)
    VALIDATE_ADAPTER = "validate_adapter"  # {app, adapter} -> {ok, code?, reason?, cause?, sha256, base_model, rank}
    STAGE_ADAPTER = "stage_adapter"  # {app, adapter, sha256} -> {ok, path, report (of the staged copy)}
    READ_MANIFEST = "read_manifest"  # {app} -> manifest dict | None
    WRITE_MANIFEST = "write_manifest"  # {app, manifest | None (remove it)} -> {ok}
    ENSURE_APP = "ensure_app"  # {app} -> {ok, changed, needs_restart, endpoint}
    RESTART_APP = "restart_app"  # {app} -> {ok, revision}
    HEAL_APP = "heal_app"  # {app} -> {ok, action: "none" | "restarted", reason?}: restart a server that died
    PROBE_ENDPOINT = "probe_endpoint"  # {app, expect_version, smoke} -> {ready, served_version, reply, error, refused}
    READ_POLICY = "read_policy"  # {app} -> {ok, policy: dict | None, source: "app" | "setting" | "none"}
    READ_DECISIONS = "read_decisions"  # {app, id} -> {decisions: [{action, by, at}], oldest first}
    REPLICA_METRICS = "replica_metrics"  # {app} -> {metrics: {replica id: {version: counters}}} (fresh reports)
    EVALUATE_ADAPTER = "evaluate_adapter"  # {app, versions, eval_set} -> {ok, scores: {version: score dict}}
    PLAN_PROVISIONING = "plan_provisioning"  # {app} -> {steps: [name, ...]}
    PROVISION_STEP = "provision_step"  # {app, step} -> {ok, step, action, outcome?}
