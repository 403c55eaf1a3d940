"""Turns an episode's new actions into numbered work, the way the Durable extension (DTFx) numbers it.

Entity calls and signals take a task id too (DTFx's ``SendEvent``): each becomes an ``EventSent``
event (``Name`` ``op``, ``InstanceId`` the entity's ``@name@key``, ``Input`` the extension's
request message JSON) and an :class:`EntityRequest` for the worker. The SDK re-keys a call's task
by the request ``id`` it reads from that event, and the entity's answer comes back as an
``EventRaised`` named with that id.

The SDK gives every scheduled task a sequence id in the order it yields them (activities, timers and
sub-orchestrations; external-event waits get none), and ``call_*_with_retry`` adds ids of its own: a
retry timer when an attempt fails and a new attempt when that timer fires. Completion events must
carry exactly those ids. The planner keeps the counter and the retry bookkeeping in a small
JSON-serialisable :class:`PlanState` that the store persists with each episode.

Ordering rule that keeps the counter in step with the SDK: an episode delivers at most one
retry-relevant event and delivers it first, so its ids come before the ids of anything yielded in the
same episode.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from devhost import history as h
from devhost.history import Event

CALL_ACTIVITY = 0
CALL_ACTIVITY_WITH_RETRY = 1
CALL_SUB_ORCHESTRATOR = 2
CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
CONTINUE_AS_NEW = 4
CREATE_TIMER = 5
WAIT_FOR_EXTERNAL_EVENT = 6
CALL_ENTITY = 7
SIGNAL_ENTITY = 9
ENTITY_REQUEST_EVENT = "op"  # EntityMessageEventNames.RequestMessageEventName
_UNSUPPORTED = {8: "call_http", 10: "signal_entity (scheduled)"}


class UnsupportedActionError(NotImplementedError):
    """The orchestrator used an API devhost does not implement (durable HTTP, scheduled signals)."""


@dataclass
class RetryEntry:
    """A task id that belongs to a ``*_with_retry`` call: an attempt or the timer after a failed one."""

    kind: str  # "activity" | "orchestrator"
    name: str
    input_json: str | None
    interval_ms: int
    max_attempts: int
    attempt: int
    role: str  # "attempt" | "timer"
    instance_id: str | None = None


@dataclass
class PlanState:
    """Per-execution counters: next task id, top-level actions already handled, open retries."""

    next_seq: int = 0
    seen_actions: int = 0
    retries: dict[int, RetryEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"next_seq": self.next_seq, "seen_actions": self.seen_actions,
                "retries": {str(k): asdict(v) for k, v in self.retries.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PlanState:
        """Inverse of :meth:`to_json`."""
        if not data:
            return cls()
        return cls(int(data["next_seq"]), int(data["seen_actions"]),
                   {int(k): RetryEntry(**v) for k, v in data.get("retries", {}).items()})


@dataclass(frozen=True)
class ActivityCall:
    """Run activity ``name`` and answer with task id ``seq``."""

    seq: int
    name: str
    input_json: str | None


@dataclass(frozen=True)
class TimerCall:
    """Fire timer ``seq`` at ``fire_at``."""

    seq: int
    fire_at: datetime


@dataclass(frozen=True)
class SubOrchestrationCall:
    """Start orchestrator ``name`` as ``instance_id``, answering task id ``seq`` when it ends."""

    seq: int
    name: str
    instance_id: str
    input_json: str | None


@dataclass(frozen=True)
class EntityRequest:
    """Deliver ``request`` (the extension's RequestMessage as a dict) to entity ``entity_id`` (``@name@key``)."""

    entity_id: str
    request: dict[str, Any]


@dataclass
class Plan:
    """Work produced by one episode plus the history events that record its scheduling."""

    scheduled: list[Event] = field(default_factory=list)
    activities: list[ActivityCall] = field(default_factory=list)
    timers: list[TimerCall] = field(default_factory=list)
    sub_orchestrations: list[SubOrchestrationCall] = field(default_factory=list)
    entity_requests: list[EntityRequest] = field(default_factory=list)

    def extend(self, other: Plan) -> None:
        """Append ``other``'s work after this plan's."""
        self.scheduled += other.scheduled
        self.activities += other.activities
        self.timers += other.timers
        self.sub_orchestrations += other.sub_orchestrations
        self.entity_requests += other.entity_requests


def entity_request(operation: str, input_json: str | None, *, signal: bool, parent: str | None,
                   now: datetime, request_id: str | None = None) -> dict[str, Any]:
    """A RequestMessage as the extension serializes it (``op``, ``signal``, ``input``, ``id``, ``parent``;
    false and null members left out, as its ``DefaultValueHandling.Ignore`` does)."""
    request: dict[str, Any] = {"op": operation}
    if signal:
        request["signal"] = True
    if input_json is not None:
        request["input"] = input_json
    request["id"] = request_id or str(uuid.uuid4())
    if parent is not None:
        request["parent"] = parent
    request["Timestamp"] = h.format_time(now)
    return request


def is_retry_trigger(state: PlanState, event: Event) -> bool:
    """Whether delivering ``event`` makes the SDK allocate retry task ids."""
    event_type = event["EventType"]
    if event_type in (h.TASK_FAILED, h.SUB_ORCHESTRATION_FAILED):
        entry = state.retries.get(event["TaskScheduledId"])
        return entry is not None and entry.role == "attempt"
    if event_type == h.TIMER_FIRED:
        entry = state.retries.get(event["TimerId"])
        return entry is not None and entry.role == "timer"
    return False


def observe_event(state: PlanState, event: Event, instance_id: str, now: datetime) -> Plan:
    """Account for a delivered event; a failed attempt schedules its retry timer, a fired one the retry."""
    plan = Plan()
    event_type = event["EventType"]
    if event_type in (h.TASK_COMPLETED, h.TASK_FAILED, h.SUB_ORCHESTRATION_COMPLETED,
                      h.SUB_ORCHESTRATION_FAILED):
        entry = state.retries.pop(event["TaskScheduledId"], None)
        if entry is not None and entry.role == "attempt" and event_type in (h.TASK_FAILED,
                                                                          h.SUB_ORCHESTRATION_FAILED):
            seq = _next(state)
            fire_at = now + timedelta(milliseconds=entry.interval_ms)
            state.retries[seq] = RetryEntry(**{**asdict(entry), "role": "timer"})
            plan.scheduled.append(h.new_timer_created_event(now, seq, h.format_time(fire_at)))
            plan.timers.append(TimerCall(seq, fire_at))
    elif event_type == h.TIMER_FIRED:
        entry = state.retries.pop(event["TimerId"], None)
        if entry is not None and entry.attempt < entry.max_attempts:
            seq = _next(state)
            attempt = RetryEntry(**{**asdict(entry), "role": "attempt", "attempt": entry.attempt + 1})
            if entry.kind == "orchestrator":
                attempt.instance_id = f"{entry.instance_id}:r{attempt.attempt}"
            state.retries[seq] = attempt
            _schedule(plan, attempt.kind, seq, entry.name, entry.input_json, attempt.instance_id, now)
    return plan


def plan_actions(state: PlanState, instance_id: str, actions: list[Any], now: datetime) -> Plan:
    """Number and plan the top-level actions the SDK added in this episode."""
    plan = Plan()
    top = actions[0] if actions and isinstance(actions[0], list) else list(actions)
    for item in top[state.seen_actions:]:
        for action in _flatten(item):
            _plan_action(state, plan, instance_id, action, now)
    state.seen_actions = len(top)
    return plan


def continue_as_new_input(actions: list[Any]) -> tuple[bool, str | None]:
    """Whether the SDK asked to continue as new, and with what input JSON."""
    top = actions[0] if actions and isinstance(actions[0], list) else list(actions)
    for item in top:
        for action in _flatten(item):
            if action.get("actionType") == CONTINUE_AS_NEW:
                return True, action.get("input")
    return False, None


def _flatten(item: Any) -> list[dict[str, Any]]:
    if isinstance(item, list):
        return [a for sub in item for a in _flatten(sub)]
    if "compoundActions" in item:
        return [a for sub in item["compoundActions"] for a in _flatten(sub)]
    return [item]


def _next(state: PlanState) -> int:
    seq = state.next_seq
    state.next_seq += 1
    return seq


def _schedule(plan: Plan, kind: str, seq: int, name: str, input_json: str | None,
              child_id: str | None, now: datetime) -> None:
    if kind == "activity":
        plan.scheduled.append(h.new_task_scheduled_event(now, seq, name, input_json))
        plan.activities.append(ActivityCall(seq, name, input_json))
    else:
        assert child_id is not None
        plan.scheduled.append(h.new_sub_orchestration_created_event(now, seq, name, child_id, input_json))
        plan.sub_orchestrations.append(SubOrchestrationCall(seq, name, child_id, input_json))


def _plan_action(state: PlanState, plan: Plan, instance_id: str, action: dict[str, Any],
                 now: datetime) -> None:
    action_type = action.get("actionType")
    if action_type in _UNSUPPORTED:
        raise UnsupportedActionError(f"devhost does not support context.{_UNSUPPORTED[action_type]}()")
    if action_type in (WAIT_FOR_EXTERNAL_EVENT, CONTINUE_AS_NEW):
        return  # no task id; external events are delivered as they arrive
    seq = _next(state)
    if action_type in (CALL_ENTITY, SIGNAL_ENTITY):
        # The shim hands the SDK's input (already JSON) to CallEntityAsync/SignalEntity as an object,
        # and RequestMessage.SetInput serializes it again: the request carries a JSON string literal.
        raw = action.get("input")
        request = entity_request(action["operation"], json.dumps(raw) if raw is not None else None,
                                 signal=action_type == SIGNAL_ENTITY, parent=instance_id, now=now)
        target = action["instanceId"]
        plan.scheduled.append(h.new_event_sent_event(now, seq, target, ENTITY_REQUEST_EVENT, json.dumps(request)))
        plan.entity_requests.append(EntityRequest(target, request))
        return
    if action_type == CREATE_TIMER:
        fire_at = h.parse_time(action["fireAt"])
        plan.scheduled.append(h.new_timer_created_event(now, seq, action["fireAt"]))
        plan.timers.append(TimerCall(seq, fire_at))
        return
    name = action["functionName"]
    input_json = action.get("input")
    if action_type in (CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY):
        kind, child_id = "activity", None
    elif action_type in (CALL_SUB_ORCHESTRATOR, CALL_SUB_ORCHESTRATOR_WITH_RETRY):
        kind, child_id = "orchestrator", action.get("instanceId") or f"{instance_id}:{seq:04d}"
    else:
        raise UnsupportedActionError(f"unknown action type {action_type!r}")
    if action_type in (CALL_ACTIVITY_WITH_RETRY, CALL_SUB_ORCHESTRATOR_WITH_RETRY):
        options = action["retryOptions"]
        state.retries[seq] = RetryEntry(kind, name, input_json,
                                        int(options["firstRetryIntervalInMilliseconds"]),
                                        int(options["maxNumberOfAttempts"]), 1, "attempt", child_id)
    _schedule(plan, kind, seq, name, input_json, child_id, now)
