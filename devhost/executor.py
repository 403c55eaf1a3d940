"""Replay executor: one pure call runs an orchestrator episode through the SDK's own replay engine.

``execute`` builds the context JSON the Functions host sends to an orchestration trigger (history of
past and new events with ``IsPlayed``, input, instance id, replay schema), calls the function the SDK
registered for the trigger (``get_user_function()``, which replays the generator and returns the
orchestrator state as JSON), and parses that state. Nothing here touches storage or the clock, so
replaying the same stored history twice gives the same actions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from devhost import history as h
from devhost.functions import FunctionIndex
from devhost.history import Event

# Replay schema V3 (actions as one list with WhenAll/WhenAny compound actions). No long-timer settings
# are sent, so timers are never split.
UPPER_SCHEMA_VERSION = 2
_OUT_OF_PROC_LABEL = "\n\n$OutOfProcData$:"
# Bookkeeping events the SDK's replay never reads (it only acts on episode starts, execution start and
# completions). Leaving them out of past episodes halves the timestamp parsing that dominates replay.
REPLAY_IGNORED = frozenset({h.TASK_SCHEDULED, h.TIMER_CREATED, h.SUB_ORCHESTRATION_CREATED,
                            h.ORCHESTRATOR_COMPLETED})


class OrchestratorStateError(RuntimeError):
    """The SDK returned something that is not an orchestrator state."""


class EpisodeResult(NamedTuple):
    """What one episode of an orchestrator asked for."""

    actions: list[dict[str, Any]]
    custom_status: Any
    is_done: bool
    output: Any
    error: str | None


def build_context(
    instance_id: str, input_json: str | None, old_events: Sequence[Event], new_events: Sequence[Event],
    *, parent_instance_id: str | None = None, compact: bool = False,
) -> str:
    """The orchestration-trigger payload: history (old events played, new ones not) and input.

    ``compact`` leaves out the past events listed in :data:`REPLAY_IGNORED`.
    """
    history = [{**e, "IsPlayed": True} for e in old_events
               if not (compact and e["EventType"] in REPLAY_IGNORED)]
    history.extend({**e, "IsPlayed": False} for e in new_events)
    return json.dumps({
        "history": history,
        "input": input_json,
        "instanceId": instance_id,
        "isReplaying": bool(old_events),
        "parentInstanceId": parent_instance_id,
        "upperSchemaVersion": UPPER_SCHEMA_VERSION,
    })


def flatten_actions(actions: Sequence[Any]) -> list[dict[str, Any]]:
    """The SDK's action payload (list of action lists) as one flat list, in scheduling order."""
    flat: list[dict[str, Any]] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for sub in item:
                walk(sub)
        elif isinstance(item, dict):
            compound = item.get("compoundActions")
            if compound is not None:
                walk(compound)
            else:
                flat.append(item)

    walk(list(actions))
    return flat


def parse_state(state_json: str) -> EpisodeResult:
    """Parse the orchestrator state JSON returned by the SDK."""
    try:
        state = json.loads(state_json)
    except (TypeError, ValueError) as exc:
        raise OrchestratorStateError(f"orchestrator returned invalid state: {state_json!r:.200}") from exc
    if not isinstance(state, dict) or "isDone" not in state:
        raise OrchestratorStateError(f"orchestrator returned no isDone field: {state_json!r:.200}")
    return EpisodeResult(
        actions=list(state.get("actions") or []),
        custom_status=state.get("customStatus"),
        is_done=bool(state["isDone"]),
        output=state.get("output"),
        error=state.get("error"),
    )


def execute(
    functions: FunctionIndex | Any, name: str, instance_id: str, input_json: str | None,
    old_events: Sequence[Event], new_events: Sequence[Event], *, parent_instance_id: str | None = None,
    compact: bool = False,
) -> EpisodeResult:
    """Run one episode of orchestrator ``name`` and return its actions, custom status and outcome.

    An orchestrator that raises still yields an :class:`EpisodeResult`, with ``error`` set to the
    exception message (the SDK appends its state after an ``$OutOfProcData$`` marker, as the host
    expects). ``functions`` is a :class:`FunctionIndex` or the app itself. ``compact`` sends past
    episodes without the bookkeeping events the replay ignores (same result, less parsing).
    """
    if not isinstance(functions, FunctionIndex):
        functions = FunctionIndex.from_app(functions)
    handle = functions.orchestrator(name).user_function
    context = build_context(instance_id, input_json, old_events, new_events,
                            parent_instance_id=parent_instance_id, compact=compact)
    try:
        return parse_state(handle(context))
    except OrchestratorStateError:
        raise
    except Exception as exc:  # the orchestrator failed: the SDK's formatted error carries the state
        message = str(exc)
        head, sep, tail = message.partition(_OUT_OF_PROC_LABEL)
        if sep:
            result = parse_state(tail)
            return result._replace(is_done=True, error=result.error or head)
        return EpisodeResult([], None, True, None, message or type(exc).__name__)


def replay_episodes(
    functions: FunctionIndex | Any, name: str, instance_id: str, input_json: str | None,
    events: Sequence[Event], *, parent_instance_id: str | None = None, compact: bool = True,
) -> list[EpisodeResult]:
    """Replay a stored history episode by episode (split at OrchestratorStarted); one result each.

    Comparing the results of two replays (or of old and new code) detects non-determinism.
    """
    starts = [i for i, e in enumerate(events) if e["EventType"] == h.ORCHESTRATOR_STARTED]
    results = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(events)
        results.append(execute(functions, name, instance_id, input_json, events[:start], events[start:end],
                               parent_instance_id=parent_instance_id, compact=compact))
    return results
