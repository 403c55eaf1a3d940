"""The health gate on devhost (the SDK's real replay) with a stand-in probe activity: a wall-clock deadline,
bounded history for a long wait (sub-orchestration + continue_as_new), and a refused adapter ending the wait."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import azure.durable_functions as df
import pytest

from activities.catalog import Activity
from devhost.executor import replay_episodes
from devhost.host import DevHost
from devhost.store import InstanceQuery
from orchestrations import health_gate
from orchestrations.health_gate import WAIT_SERVING_ORCHESTRATOR, wait_until_serving

Probe = Callable[[int], dict[str, Any]]  # probe number (1-based) -> probe result


def not_ready(n: int) -> dict[str, Any]:
    return {"ready": False, "served_version": "old", "reply": None, "error": "serving 'old'", "refused": None}


def gate_app(probe: Probe, seconds_per_probe: float = 0.0) -> df.DFApp:
    """An orchestrator `gate` running `wait_until_serving` on its input, the health gate's blueprint, and
    a stand-in probe activity answering `probe(n)` after `seconds_per_probe`."""
    bp = df.Blueprint()
    count = [0]

    @bp.orchestration_trigger(context_name="context", orchestration="gate")
    def gate(context: df.DurableOrchestrationContext):
        args = context.get_input()
        return (yield from wait_until_serving(context, "app", "new", args["timeout_s"], args["interval_s"]))

    @bp.activity_trigger(input_name="payload", activity=Activity.PROBE_ENDPOINT)
    def probe_endpoint(payload: dict) -> dict:
        assert payload == {"app": "app", "expect_version": "new", "smoke": False}
        time.sleep(seconds_per_probe)
        count[0] += 1
        return probe(count[0])

    app = df.DFApp()
    for blueprint in (health_gate.bp, bp):
        app.register_functions(blueprint)
    return app


@pytest.fixture
async def hosts(tmp_path) -> AsyncIterator[list[DevHost]]:
    started: list[DevHost] = []
    yield started
    for host in started:
        await host.stop()


async def start_gate(hosts: list[DevHost], tmp_path, app: df.DFApp, timeout_s: float,
                     interval_s: float) -> DevHost:
    host = DevHost(app, state_dir=tmp_path / f"state{len(hosts)}", port=0)
    hosts.append(host)
    await host.start()
    host.worker.start_new("gate", "g1", json.dumps({"timeout_s": timeout_s, "interval_s": interval_s}))
    return host


async def finish(host: DevHost, timeout: float) -> dict[str, Any]:
    record = await host.worker.wait_for("g1", timeout=timeout)
    assert record.status == "Completed", record.output_json
    return json.loads(record.output_json)


async def test_wait_ends_by_the_deadline_not_after_n_probes(hosts, tmp_path) -> None:
    """timeout 3 s, interval 0.2 s, probes of 0.5 s: the gate gives up within timeout + one probe (+ slack),
    not after timeout/interval = 15 probes-and-sleeps (about 10 s)."""
    started = time.monotonic()
    host = await start_gate(hosts, tmp_path, gate_app(not_ready, seconds_per_probe=0.5), 3.0, 0.2)
    out = await finish(host, timeout=30)
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed <= 3.0 + 0.5 + 0.7, elapsed
    assert out["ready"] is False and out["refused"] is None and out["error"] == "serving 'old'"
    assert 3 <= out["probes"] <= 5 and out["waited_s"] >= 3.0


async def test_long_wait_continues_as_new_with_bounded_history(hosts, tmp_path, monkeypatch) -> None:
    """A wait of many probes moves into the wait_serving sub-orchestration, which continues as new every
    PROBES_PER_EXECUTION probes: no instance's history grows with the number of probes."""
    monkeypatch.setattr(health_gate, "PROBES_PER_EXECUTION", 4)
    monkeypatch.setattr(health_gate, "MAX_BACKOFF_S", 0.05)
    host = await start_gate(hosts, tmp_path, gate_app(not_ready), 2.5, 0.02)
    largest = 0
    while host.worker.is_running("g1"):
        for record in host.store.query(InstanceQuery()):
            largest = max(largest, len(host.store.history(record.id)))
        await asyncio.sleep(0.05)
    out = await finish(host, timeout=5)
    records = host.store.query(InstanceQuery())
    children = [r for r in records if r.name == WAIT_SERVING_ORCHESTRATOR]
    assert out["probes"] >= 20 and out["waited_s"] >= 2.5 and out["ready"] is False
    assert len(children) == 1 and children[0].id.startswith("g1:") and children[0].parent_id == "g1"
    assert children[0].execution >= 4  # continued as new (execution counts from 0)
    largest = max([largest] + [len(host.store.history(r.id)) for r in records])
    assert largest <= 10 * 4 + 10, largest  # about 8 events per probe-and-sleep, 4 per execution
    parent = host.store.get("g1")
    episodes = replay_episodes(host.functions, "gate", "g1", parent.input_json, host.store.history("g1"))
    again = replay_episodes(host.functions, "gate", "g1", parent.input_json, host.store.history("g1"))
    assert [e.actions for e in episodes] == [e.actions for e in again]  # child id deterministic under replay
    assert episodes[-1].output == out


async def test_ready_after_the_hand_over_comes_back_from_the_sub_orchestration(hosts, tmp_path, monkeypatch) -> None:
    """Serving on the 7th probe (past two executions of 2 probes each, plus 2 in the caller): that probe returns."""
    monkeypatch.setattr(health_gate, "PROBES_PER_EXECUTION", 2)

    def serving_at_7(n: int) -> dict[str, Any]:
        return not_ready(n) if n < 7 else {"ready": True, "served_version": "new", "reply": None, "error": None}

    host = await start_gate(hosts, tmp_path, gate_app(serving_at_7), 30.0, 0.01)
    out = await finish(host, timeout=20)
    assert out["ready"] is True and out["served_version"] == "new" and out["probes"] == 7
    assert out["refused"] is None and out["waited_s"] < 30


async def test_refused_adapter_ends_the_wait_at_once(hosts, tmp_path) -> None:
    """A probe that says the engine refused the adapter ends a 60 s wait right away, with the engine's reason."""

    def refused_at_2(n: int) -> dict[str, Any]:
        if n < 2:
            return not_ready(n)
        return {**not_ready(n), "refused": "rank 64 exceeds max_lora_rank 16", "error": "refused: rank 64"}

    started = time.monotonic()
    host = await start_gate(hosts, tmp_path, gate_app(refused_at_2), 60.0, 0.2)
    out = await finish(host, timeout=10)
    assert time.monotonic() - started < 5
    assert out["refused"] == "rank 64 exceeds max_lora_rank 16" and out["ready"] is False and out["probes"] == 2
