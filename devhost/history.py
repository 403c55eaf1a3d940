"""History events in the JSON shape the Durable Functions host sends to the Python SDK.

Each ``new_*_event`` factory returns one event as a plain dict (``EventType``, ``EventId``, ``Timestamp``
plus the fields the SDK's replay reads). ``IsPlayed`` is not stored: the executor adds it when it builds
the context, ``True`` for past episodes and ``False`` for the new one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]

EXECUTION_STARTED = 0
EXECUTION_COMPLETED = 1
EXECUTION_FAILED = 2
EXECUTION_TERMINATED = 3
TASK_SCHEDULED = 4
TASK_COMPLETED = 5
TASK_FAILED = 6
SUB_ORCHESTRATION_CREATED = 7
SUB_ORCHESTRATION_COMPLETED = 8
SUB_ORCHESTRATION_FAILED = 9
TIMER_CREATED = 10
TIMER_FIRED = 11
ORCHESTRATOR_STARTED = 12
ORCHESTRATOR_COMPLETED = 13
EVENT_SENT = 14
EVENT_RAISED = 15

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(when: datetime) -> str:
    """Format a datetime as the UTC ISO string the SDK parses (``2026-01-01T00:00:00.000000Z``)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.strftime(_FORMAT)


def parse_time(text: str) -> datetime:
    """Parse a timestamp written by :func:`format_time` (or an ISO string) into an aware UTC datetime."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _event(event_type: int, timestamp: datetime, event_id: int = -1, **fields: Any) -> Event:
    event: Event = {"EventType": event_type, "EventId": event_id, "Timestamp": format_time(timestamp)}
    event.update(fields)
    return event


def new_orchestrator_started_event(timestamp: datetime) -> Event:
    """Start of an episode; its timestamp becomes ``context.current_utc_datetime``."""
    return _event(ORCHESTRATOR_STARTED, timestamp)


def new_orchestrator_completed_event(timestamp: datetime) -> Event:
    """End of an episode."""
    return _event(ORCHESTRATOR_COMPLETED, timestamp)


def new_execution_started_event(
    timestamp: datetime, name: str, input_json: str | None, *, version: str = "",
    parent_instance_id: str | None = None,
) -> Event:
    """An execution begins with ``input_json`` (already JSON-encoded, or ``None``)."""
    fields: dict[str, Any] = {"Name": name, "Input": input_json, "Version": version}
    if parent_instance_id:
        fields["ParentInstance"] = {"OrchestrationInstance": {"InstanceId": parent_instance_id}}
    return _event(EXECUTION_STARTED, timestamp, **fields)


def new_execution_completed_event(timestamp: datetime, status: str, result_json: str | None) -> Event:
    """The execution ended with ``status`` (Completed, Failed, ContinuedAsNew)."""
    return _event(EXECUTION_COMPLETED, timestamp, OrchestrationStatus=status, Result=result_json)


def new_execution_terminated_event(timestamp: datetime, reason: str) -> Event:
    """The instance was terminated with ``reason``."""
    return _event(EXECUTION_TERMINATED, timestamp, Input=reason)


def new_task_scheduled_event(timestamp: datetime, task_id: int, name: str, input_json: str | None) -> Event:
    """Activity ``name`` was scheduled as task ``task_id``."""
    return _event(TASK_SCHEDULED, timestamp, task_id, Name=name, Input=input_json)


def new_task_completed_event(timestamp: datetime, task_id: int, result_json: str | None) -> Event:
    """Task ``task_id`` returned ``result_json``."""
    return _event(TASK_COMPLETED, timestamp, TaskScheduledId=task_id, Result=result_json)


def new_task_failed_event(timestamp: datetime, task_id: int, reason: str, details: str = "") -> Event:
    """Task ``task_id`` raised."""
    return _event(TASK_FAILED, timestamp, TaskScheduledId=task_id, Reason=reason, Details=details)


def new_timer_created_event(timestamp: datetime, timer_id: int, fire_at: str) -> Event:
    """Durable timer ``timer_id`` was created to fire at ``fire_at``."""
    return _event(TIMER_CREATED, timestamp, timer_id, FireAt=fire_at)


def new_timer_fired_event(timestamp: datetime, timer_id: int, fire_at: str) -> Event:
    """Durable timer ``timer_id`` fired."""
    return _event(TIMER_FIRED, timestamp, TimerId=timer_id, FireAt=fire_at)


def new_event_raised_event(timestamp: datetime, name: str, input_json: str | None) -> Event:
    """External event ``name`` arrived with ``input_json``."""
    return _event(EVENT_RAISED, timestamp, Name=name, Input=input_json)


def new_event_sent_event(timestamp: datetime, task_id: int, instance_id: str, name: str, input_json: str) -> Event:
    """Event ``name`` was sent to ``instance_id`` as task ``task_id`` (entity requests: name ``op``)."""
    return _event(EVENT_SENT, timestamp, task_id, InstanceId=instance_id, Name=name, Input=input_json)


def new_sub_orchestration_created_event(
    timestamp: datetime, task_id: int, name: str, instance_id: str, input_json: str | None,
) -> Event:
    """Sub-orchestration ``name`` was started as ``instance_id`` for task ``task_id``."""
    return _event(SUB_ORCHESTRATION_CREATED, timestamp, task_id, Name=name, InstanceId=instance_id,
                  Input=input_json)


def new_sub_orchestration_completed_event(timestamp: datetime, task_id: int, result_json: str | None) -> Event:
    """The sub-orchestration behind task ``task_id`` completed."""
    return _event(SUB_ORCHESTRATION_COMPLETED, timestamp, TaskScheduledId=task_id, Result=result_json)


def new_sub_orchestration_failed_event(
    timestamp: datetime, task_id: int, reason: str, details: str = "",
) -> Event:
    """The sub-orchestration behind task ``task_id`` failed."""
    return _event(SUB_ORCHESTRATION_FAILED, timestamp, TaskScheduledId=task_id, Reason=reason,
                  Details=details)
