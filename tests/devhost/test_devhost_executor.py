"""Replay executor and planner: exact next actions from built histories, determinism, task numbering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devhost import history as h
from devhost.executor import build_context, execute
from devhost.functions import FunctionIndex, FunctionNotFoundError
from devhost.planner import PlanState, is_retry_trigger, observe_event, plan_actions
from tests.devhost.apps.durable_samples import app

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FUNCTIONS = FunctionIndex.from_app(app)


def started(name: str, input_json: str | None = None) -> list[h.Event]:
    """First-episode events for ``name``."""
    return [h.new_orchestrator_started_event(T0), h.new_execution_started_event(T0, name, input_json)]


def episode(old: list[h.Event], scheduled: list[h.Event]) -> list[h.Event]:
    """Close an episode the way the host records it."""
    return old + scheduled + [h.new_orchestrator_completed_event(T0)]


def test_first_episode_schedules_first_activity():
    """Function chaining: the first episode asks for exactly say_hello('Tokyo')."""
    result = execute(FUNCTIONS, "hello_chain", "i1", None, [], started("hello_chain"))
    assert result.actions == [[{"actionType": 0, "functionName": "say_hello", "input": '"Tokyo"'}]]
    assert not result.is_done and result.error is None


def test_completed_history_returns_output():
    """A history with all three results replays to the orchestrator's return value."""
    old = started("hello_chain")
    for seq, city in enumerate(["Tokyo", "Seattle", "London"]):
        old = episode(old, [h.new_task_scheduled_event(T0, seq, "say_hello", json.dumps(city))])
        old = old + [h.new_orchestrator_started_event(T0), h.new_task_completed_event(T0, seq, json.dumps(city))]
    result = execute(FUNCTIONS, "hello_chain", "i1", None, old[:-2], old[-2:])
    assert result.is_done and result.output == ["Tokyo", "Seattle", "London"]


def test_replaying_same_history_twice_gives_same_actions():
    """Determinism: the same stored history yields identical actions on every replay."""
    old = episode(started("approval", "5"), [])
    first = execute(FUNCTIONS, "approval", "i2", "5", [], old)
    second = execute(FUNCTIONS, "approval", "i2", "5", [], old)
    assert first == second
    fire_at = first.actions[0][0]["compoundActions"][1]["fireAt"]
    assert h.parse_time(fire_at) == T0 + timedelta(seconds=5)


def test_failed_activity_surfaces_as_orchestrator_error():
    """An uncaught activity failure comes back as an error with the activity's reason."""
    old = episode(started("failing"), [h.new_task_scheduled_event(T0, 0, "explode", '"boom"')])
    new = [h.new_orchestrator_started_event(T0), h.new_task_failed_event(T0, 0, "ValueError: boom")]
    result = execute(FUNCTIONS, "failing", "i3", None, old, new)
    assert result.error is not None and "ValueError: boom" in result.error


def test_unknown_orchestrator_is_named():
    """Asking for a missing orchestrator raises FunctionNotFoundError naming it."""
    with pytest.raises(FunctionNotFoundError, match="nope"):
        execute(FUNCTIONS, "nope", "i4", None, [], started("nope"))


def test_context_marks_old_events_played():
    """Old events carry IsPlayed true, new ones false."""
    ctx = json.loads(build_context("i5", None, [h.new_orchestrator_started_event(T0)],
                                   [h.new_orchestrator_started_event(T0)]))
    assert [e["IsPlayed"] for e in ctx["history"]] == [True, False]


def test_fan_out_numbers_tasks_in_yield_order():
    """Fan-out: four activities get task ids 0..3 in order."""
    result = execute(FUNCTIONS, "fan_out_fan_in", "i6", "[1, 2, 3, 4]", [], started("fan_out_fan_in"))
    state = PlanState()
    plan = plan_actions(state, "i6", result.actions, T0)
    assert [(a.seq, a.input_json) for a in plan.activities] == [(0, "1"), (1, "2"), (2, "3"), (3, "4")]
    assert state.next_seq == 4 and state.seen_actions == 1


def test_retry_ids_match_sdk_replay():
    """A failed retry attempt gets timer id 1 and the retry id 2, which the SDK then accepts."""
    state = PlanState()
    first = execute(FUNCTIONS, "retrying", "i7", '"rk"', [], started("retrying", '"rk"'))
    plan = plan_actions(state, "i7", first.actions, T0)
    old = episode(started("retrying", '"rk"'), plan.scheduled)
    failed = h.new_task_failed_event(T0, 0, "flaky failure 1")
    assert is_retry_trigger(state, failed)
    timer_plan = observe_event(state, failed, "i7", T0)
    assert [t.seq for t in timer_plan.timers] == [1]
    fired = h.new_timer_fired_event(T0, 1, h.format_time(T0))
    retry_plan = observe_event(state, fired, "i7", T0)
    assert [a.seq for a in retry_plan.activities] == [2]
    new = [h.new_orchestrator_started_event(T0), failed, fired,
           h.new_task_completed_event(T0, 2, '"ok after 2"')]
    result = execute(FUNCTIONS, "retrying", "i7", '"rk"', old, new)
    assert result.is_done and result.output == "ok after 2"


def test_compact_history_replays_identically():
    """Leaving out the bookkeeping events gives the same actions and output as the full history."""
    old = started("fan_out_fan_in", "[2, 3]")
    old = episode(old, [h.new_task_scheduled_event(T0, 0, "square", "2"), h.new_task_scheduled_event(T0, 1, "square", "3")])
    new = [h.new_orchestrator_started_event(T0), h.new_task_completed_event(T0, 0, "4")]
    args = (FUNCTIONS, "fan_out_fan_in", "i8", "[2, 3]")
    assert execute(*args, old, new) == execute(*args, old, new, compact=True)
    old = old + new + [h.new_orchestrator_completed_event(T0)]
    new = [h.new_orchestrator_started_event(T0), h.new_task_completed_event(T0, 1, "9")]
    full, compact = execute(*args, old, new), execute(*args, old, new, compact=True)
    assert full == compact and compact.output == 13
