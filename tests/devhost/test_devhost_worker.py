"""The SDK's sample shapes run unchanged on the worker and give the right outputs."""

from __future__ import annotations

import json
import uuid

import pytest

from devhost.executor import replay_episodes
from devhost.functions import FunctionIndex
from devhost.host import DevHost
from devhost.store import Store
from devhost.worker import InstanceGoneError, InstanceNotFoundError, Worker
from tests.devhost.apps.durable_samples import app


async def run(host: DevHost, name: str, value=None, timeout: float = 10):
    """Start ``name`` with ``value`` as input and wait for the terminal record."""
    input_json = None if value is None else json.dumps(value)
    instance_id = host.worker.start_new(name, None, input_json)
    return await host.worker.wait_for(instance_id, timeout)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("hello_chain", None, ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]),
    ("fan_out_fan_in", [1, 2, 3, 4], 30),
    ("approval", 0.1, {"approved": None, "timed_out": True}),
    ("monitor", None, {"rounds": 3, "last": "checked-2"}),
    ("parent", None, {"sum": 14, "chains": [["Hello Tokyo!", "Hello Seattle!", "Hello London!"]] * 2}),
    ("chain", {"n": 12}, 12),
])
async def test_sample_outputs(devhost, name, value, expected):
    """Each sample completes with the output the SDK's samples document."""
    rec = await run(devhost, name, value)
    assert (rec.status, json.loads(rec.output_json)) == ("Completed", expected)


async def test_stored_history_replays_deterministically(devhost):
    """Replaying a finished instance's stored history twice gives identical episodes, ending in its output."""
    rec = await run(devhost, "parent")
    events = devhost.store.history(rec.id)
    first = replay_episodes(app, rec.name, rec.id, rec.input_json, events)
    second = replay_episodes(app, rec.name, rec.id, rec.input_json, events)
    assert first == second
    assert first[-1].is_done and first[-1].output == json.loads(rec.output_json)


async def test_retry_succeeds_on_third_attempt(devhost):
    """call_activity_with_retry: an activity failing twice succeeds on attempt three."""
    rec = await run(devhost, "retrying", f"k-{uuid.uuid4()}")
    assert json.loads(rec.output_json) == "ok after 3"
    kinds = [e["EventType"] for e in devhost.store.history(rec.id)]
    assert kinds.count(4) == 3 and kinds.count(10) == 2  # three TaskScheduled, two retry timers


async def test_parallel_retries_keep_task_ids_in_step(devhost):
    """Several retrying activities failing in the same round still complete with the right results."""
    rec = await run(devhost, "retry_fan_out", f"k-{uuid.uuid4()}")
    assert rec.status == "Completed", rec.output_json
    assert json.loads(rec.output_json) == ["ok after 2"] * 3 + ["Hello Oslo!", "Hello Bergen!"]
    episodes: list[list[int]] = []
    for event in devhost.store.history(rec.id):
        if event["EventType"] == 12:  # OrchestratorStarted opens an episode
            episodes.append([])
        episodes[-1].append(event["EventType"])
    assert max(e.count(6) + e.count(11) for e in episodes) == 1  # one retry event per episode


async def test_sub_orchestration_retry_starts_a_new_child(devhost):
    """A failed child is retried as a new instance; the parent gets the second child's output."""
    rec = await run(devhost, "parent_retry", f"k-{uuid.uuid4()}")
    output = json.loads(rec.output_json)
    assert rec.status == "Completed" and output["result"] == "ok after 2"
    first_child = devhost.store.get(f"{rec.id}:0000")
    assert first_child.status == "Failed" and output["child"] == f"{rec.id}:0000:r2"


async def test_retry_exhausted_raises_in_orchestrator(devhost):
    """When retries run out the orchestrator sees the activity's exception."""
    rec = await run(devhost, "retry_exhausted", f"k-{uuid.uuid4()}")
    assert json.loads(rec.output_json) == {"failed": True}


async def test_uncaught_failure_fails_instance(devhost):
    """An orchestrator that lets an activity error escape ends Failed, naming the error."""
    rec = await run(devhost, "failing")
    assert rec.status == "Failed" and "ValueError: boom" in json.loads(rec.output_json)


async def test_external_event_wins_over_timer(devhost):
    """Human interaction: the Approval event beats a 30 s durable timer."""
    instance_id = devhost.worker.start_new("approval", None, "30")
    devhost.worker.raise_event(instance_id, "Approval", json.dumps({"by": "lead"}))
    rec = await devhost.worker.wait_for(instance_id, 5)
    assert json.loads(rec.output_json) == {"approved": {"by": "lead"}}


async def test_terminate_stops_waiting_instance(devhost):
    """Terminate ends a waiting instance with the reason as output; later events are refused."""
    instance_id = devhost.worker.start_new("approval", None, "30")
    devhost.worker.terminate(instance_id, "no longer needed")
    rec = await devhost.worker.wait_for(instance_id, 5)
    assert (rec.status, json.loads(rec.output_json)) == ("Terminated", "no longer needed")
    with pytest.raises(InstanceGoneError):
        devhost.worker.raise_event(instance_id, "Approval", "1")
    with pytest.raises(InstanceNotFoundError):
        devhost.worker.terminate("missing", "x")


async def test_custom_status_and_continue_as_new_history(devhost):
    """continue_as_new restarts with a short history; the custom status survives the last round."""
    rec = await run(devhost, "monitor", {"round": 0, "rounds": 4})
    assert json.loads(rec.custom_status_json) == {"round": 3, "status": "checked-3"}
    history = devhost.store.history(rec.id)
    assert sum(1 for e in history if e["EventType"] == 0) == 1  # one ExecutionStarted: history was reset


async def test_unfinished_instance_resumes_after_restart(tmp_path):
    """A worker stopped mid-chain leaves state that a new worker on the same store completes."""
    functions = FunctionIndex.from_app(app)
    store = Store(tmp_path / "s.sqlite")
    worker = Worker(store, functions)
    await worker.start()
    instance_id = worker.start_new("chain", None, json.dumps({"n": 6, "sleep": 0.05}))
    while (store.get(instance_id).custom_status_json or "").find('"step": 2') < 0:
        await _tick()
    await worker.stop()
    store.close()
    store = Store(tmp_path / "s.sqlite")
    worker = Worker(store, functions)
    await worker.start()
    rec = await worker.wait_for(instance_id, 10)
    await worker.stop()
    assert (rec.status, json.loads(rec.output_json)) == ("Completed", 6)


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)
