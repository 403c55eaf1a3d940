"""Rollout stages and the status record every rollout publishes as its Durable custom status.

`received → validating → staging → provisioning → activating → [evaluating → awaiting_approval → canary →]
verifying → live | rolled_back | failed` (the bracketed stages only where the app's rollout policy or an evaluation
set asks for them); each stage entered is recorded with its time, and a terminal failure carries the reason. The status API and
`adapterctl` read this record as JSON; this module is its only definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    RECEIVED = "received"
    VALIDATING = "validating"
    STAGING = "staging"
    PROVISIONING = "provisioning"
    ACTIVATING = "activating"
    EVALUATING = "evaluating"  # the quality gate: the candidate and the live version asked by name
    AWAITING_APPROVAL = "awaiting_approval"
    CANARY = "canary"  # a share of the alias's callers on the candidate, step by step
    VERIFYING = "verifying"
    LIVE = "live"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STAGES


TERMINAL_STAGES = frozenset({Stage.LIVE, Stage.ROLLED_BACK, Stage.FAILED})


def record_history(record: dict[str, Any], rollout_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A deployment record's stages: its own `received` (the server's acceptance time), then its rollout's after
    the rollout's own `received`."""
    return record.get("history", [])[:1] + rollout_history[1:]


#: The rollout's figures a deployment record keeps (the reconciler copies them from the rollout's outcome, the
#: status API from its custom status while it runs).
OUTCOME_FIELDS = ("version", "activation", "reason", "cause", "replicas", "policy_source", "evaluation", "approval",
                  "canary")


class Cause(StrEnum):
    """Why a rollout did not go live: decides whether the same content is tried again."""

    CONTENT = "content"  # the adapter or its upload (validation, engine refusal, smoke chat): never retried as is
    PLATFORM = "platform"  # the platform refused a request (configuration): not retried
    TRANSIENT = "transient"  # storage, network, platform or a timeout: the reconciler retries with backoff
    SUPERSEDED = "superseded"  # a newer upload replaced the content before it was served: the record is superseded


class RolloutFailed(Exception):
    """A failure that ends the rollout; `cause` says whose fault it is (see `Cause`)."""

    def __init__(self, reason: str, cause: Cause) -> None:
        super().__init__(reason)
        self.cause = cause


@dataclass(frozen=True)
class StageEntry:
    stage: Stage
    at: str


@dataclass
class RolloutStatus:
    """What a rollout reports: where it is, how it got there, and why it stopped if it failed."""

    deployment_id: str
    app: str
    adapter: str
    sha256: str | None = None
    version: str | None = None
    stage: Stage = Stage.RECEIVED
    history: list[StageEntry] = field(default_factory=list)
    reason: str | None = None
    activation: str | None = None  # "hot_swap" | "restart"
    cause: str | None = None  # a `Cause`, when the rollout did not go live
    unrestored: dict[str, Any] | None = None  # {"manifest": ...} a failed rollback could not restore
    #: Per replica the platform listed at the gate: what its report said (`alias_version`, `manifest_updated_at`,
    #: `converged`, `stale`, ...) and whether it `counted` (`activities.replica_reports.replica_verdict`).
    replicas: dict[str, dict[str, Any]] | None = None
    policy_source: str | None = None  # where the rollout policy came from: "app", "setting" or "none"
    #: The quality gate's scores per evaluation set and version, and whether the candidate passed.
    evaluation: dict[str, Any] | None = None
    #: {"required", "deadline", "decision", "by", "at"} while a rollout waits for a person and after.
    approval: dict[str, Any] | None = None
    #: {"steps", "step", "weight", "hold_until", "analysis": [per finished step: weight, figures by version,
    #: verdict]}: where a canary is and what each hold measured.
    canary: dict[str, Any] | None = None

    def enter(self, stage: Stage, at: datetime, reason: str | None = None, cause: str | None = None) -> None:
        """Move to `stage` at `at` (the orchestration's deterministic clock)."""
        self.stage = stage
        self.history.append(StageEntry(stage, at.isoformat()))
        if reason is not None:
            self.reason = reason
        if cause is not None:
            self.cause = str(cause)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stage"] = str(self.stage)
        data["history"] = [{"stage": str(e.stage), "at": e.at} for e in self.history]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutStatus:
        fields = dict(data)
        fields["stage"] = Stage(fields.get("stage", Stage.RECEIVED))
        fields["history"] = [StageEntry(Stage(e["stage"]), e["at"]) for e in fields.get("history", [])]
        return cls(**fields)
