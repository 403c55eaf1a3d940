"""Entities on devhost: function- and class-based entities driven through the SDK's own entity
handler, orchestrator call_entity / signal_entity replayed exactly, the client's signal_entity /
read_entity_state, the Durable HTTP API's entity routes, and state that survives a restart."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import azure.durable_functions as df
import pytest

from devhost import history as h
from devhost.executor import replay_episodes
from devhost.host import DevHost
from devhost.http_front import WEBHOOK_PATH
from devhost.planner import ENTITY_REQUEST_EVENT, entity_request
from devhost.store import Batch, EntityQueueRow
from devhost.worker import scheduler_id
from tests.devhost.apps.entity_samples import app as entity_app

TOKEN = "x-ms-continuation-token"


@pytest.fixture
async def host(tmp_path):
    h_ = DevHost(entity_app, state_dir=tmp_path / "state", port=0)
    await h_.start()
    try:
        yield h_
    finally:
        await h_.stop()


@pytest.fixture
async def http(host):
    async with aiohttp.ClientSession(base_url=host.url) as session:
        yield session


async def settle(host: DevHost, *entity_ids: str, timeout: float = 5) -> None:
    """Wait until no request is queued for these entities."""
    for _ in range(int(timeout / 0.01)):
        if all(host.worker.entity_idle(e) for e in entity_ids):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(entity_ids)


async def run(host: DevHost, name: str, input_: object = None) -> object:
    instance_id = host.worker.start_new(name, None, json.dumps(input_))
    rec = await host.worker.wait_for(instance_id, 10)
    assert rec.status == "Completed", rec.output_json
    return json.loads(rec.output_json)


async def test_sdk_counter_sample_signal_then_call(host):
    """The SDK sample: signal add 3, call get -> 3; a second run -> 6; history has the EventSent pair."""
    assert await run(host, "counter_orchestrator", "c1") == 3
    instance_id = host.worker.start_new("counter_orchestrator", None, json.dumps("c1"))
    rec = await host.worker.wait_for(instance_id, 10)
    assert json.loads(rec.output_json) == 6
    events = host.store.history(instance_id)
    sent = [e for e in events if e["EventType"] == h.EVENT_SENT]
    assert [(e["EventId"], e["Name"], e["InstanceId"]) for e in sent] == [
        (0, ENTITY_REQUEST_EVENT, "@counter@c1"), (1, ENTITY_REQUEST_EVENT, "@counter@c1")]
    signal, call = (json.loads(e["Input"]) for e in sent)
    assert signal["signal"] is True and signal["op"] == "add" and json.loads(json.loads(signal["input"])) == 3
    assert "signal" not in call and call["op"] == "get" and call["parent"] == instance_id
    answer = next(e for e in events if e["EventType"] == h.EVENT_RAISED)
    assert answer["Name"] == call["id"] and json.loads(answer["Input"]) == {"result": "6"}
    # replaying the stored history gives the same actions episode by episode, and the final output
    results = replay_episodes(entity_app, "counter_orchestrator", instance_id, json.dumps("c1"), events)
    assert results[-1].is_done and results[-1].output == 6


async def test_mixed_activities_calls_signals_and_task_all(host):
    """Task ids line up across activities, signals, calls and a fan-out; class-based entity state."""
    instance_id = host.worker.start_new("mixed_orchestrator", None, json.dumps("m1"))
    rec = await host.worker.wait_for(instance_id, 10)
    out = json.loads(rec.output_json)
    for compact in (True, False):  # the stored history replays to the same output, with or without bookkeeping
        results = replay_episodes(entity_app, "mixed_orchestrator", instance_id, json.dumps("m1"),
                                  host.store.history(instance_id), compact=compact)
        assert results[-1].is_done and results[-1].output == out and all(r.error is None for r in results)
    assert out == {"first": 10, "balance": 10, "got": [10, 6, 2], "after": 0,
                   "snapshot": {"balance": 6, "history": ["+10", "-4"]}}
    client = df.DurableOrchestrationClient(host.endpoints.client_binding())
    state = await client.read_entity_state(df.EntityId("Account", "m1"))
    assert state.entity_exists and state.entity_state == {"balance": 6, "history": ["+10", "-4"]}


async def test_entity_errors(host):
    """A raising operation fails only the call (state kept); an unknown entity fails the orchestration."""
    await run(host, "mixed_orchestrator", "e1")
    out = await run(host, "failing_entity_orchestrator", "e1")
    assert "insufficient funds: 6 < 1000" in out["caught"]
    client = df.DurableOrchestrationClient(host.endpoints.client_binding())
    assert (await client.read_entity_state(df.EntityId("Account", "e1"))).entity_state["balance"] == 6
    instance_id = host.worker.start_new("unknown_entity_orchestrator")
    rec = await host.worker.wait_for(instance_id, 10)
    assert rec.status == "Failed" and "'nope' doesn't exist" in rec.output_json


async def test_client_signal_and_read_through_the_sdk(host, http):
    """The durable client in an HTTP function: signal_entity (202 from the API) and read_entity_state."""
    async with http.get("/api/counter/k1/get") as resp:
        assert await resp.json() == {"exists": False, "state": None}
    for amount in (5, 7):
        async with http.post("/api/counter/k1/add", json=amount) as resp:
            assert resp.status == 202
    await settle(host, "@counter@k1")
    async with http.get("/api/counter/k1/get") as resp:
        assert await resp.json() == {"exists": True, "state": 12}
    async with http.post("/api/counter/k1/reset") as resp:  # no input: the SDK posts no body
        assert resp.status == 202
    await settle(host, "@counter@k1")
    async with http.get("/api/counter/k1/get") as resp:
        assert await resp.json() == {"exists": True, "state": 0}
    client = df.DurableOrchestrationClient(host.endpoints.client_binding())
    with pytest.raises(Exception, match="unexpected status code 400"):  # no such entity function
        await client.signal_entity(df.EntityId("Nope", "x"), "add", 1)


async def test_entity_http_routes(host, http):
    """GET/POST/DELETE /runtime/webhooks/durabletask/entities/...: state, signal, list with paging."""
    base = f"{WEBHOOK_PATH}/entities"
    async with http.get(f"{base}/Counter/r1") as resp:
        assert resp.status == 404
    # The SDK's client posts json.dumps(input) as the JSON body, and its entity context decodes twice:
    # a bare JSON 4 (as the extension passes it on) fails the operation, "4" is the number 4.
    async with http.post(f"{base}/Counter/r1?op=add", json=4) as resp:
        assert resp.status == 202
    await settle(host, "@counter@r1")
    async with http.get(f"{base}/Counter/r1") as resp:
        assert resp.status == 404  # the failed add set no state
    async with http.post(f"{base}/Counter/r1?op=add", json=json.dumps(4)) as resp:
        assert resp.status == 202
    async with http.post(f"{base}/Counter/r1?op=add", data="{bad", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    async with http.post(f"{base}/nope/r1?op=add", json=4) as resp:
        assert resp.status == 400
    await settle(host, "@counter@r1")
    async with http.get(f"{base}/counter/r1") as resp:  # entity names are case-insensitive
        assert resp.status == 200 and await resp.json() == 4
    for n in range(5):
        host.worker.start_new("counter_orchestrator", None, json.dumps(f"list-{n}"))
    for n in range(5):
        await settle(host, f"@counter@list-{n}")
    while True:  # wait for the orchestrations' get calls to be answered too
        if all(host.store.entity(f"@counter@list-{n}") for n in range(5)):
            break
        await asyncio.sleep(0.01)
    seen, token = [], ""
    while True:
        async with http.get(f"{base}/Counter?top=2&fetchState=true", headers={TOKEN: token} if token else {}) as resp:
            page = await resp.json()
            token = resp.headers[TOKEN]
        assert len(page) <= 2
        seen += [(e["entityId"]["key"], e["state"]) for e in page]
        if not token:
            break
    assert sorted(seen) == sorted([("r1", 4)] + [(f"list-{n}", 3) for n in range(5)])
    async with http.get(f"{base}/Account") as resp:
        assert await resp.json() == [] and resp.headers[TOKEN] == ""
    async with http.post(f"{base}/Account/d1?op=deposit", json=json.dumps(9)) as resp:
        assert resp.status == 202
    await settle(host, "@account@d1")
    async with http.get(f"{base}/Account/d1") as resp:
        assert await resp.json() == {"balance": 9, "history": ["+9"]}
    async with http.delete(f"{base}/Account/d1", json=json.dumps(None)) as resp:  # DELETE signals "delete"
        assert resp.status == 202
    await settle(host, "@account@d1")
    async with http.get(f"{base}/Account/d1") as resp:
        assert resp.status == 404


async def test_state_and_queued_requests_survive_a_restart(tmp_path):
    """Entity state is in SQLite; requests queued but not run when the host died run after restart."""
    state_dir = tmp_path / "state"
    async with DevHost(entity_app, state_dir=state_dir, port=0) as first:
        assert await run(first, "counter_orchestrator", "p1") == 3
    from devhost.store import Store
    store = Store(state_dir / "durable.sqlite")
    request = entity_request("add", json.dumps(json.dumps(10)), signal=True, parent=None, now=h.utc_now())
    store.apply(Batch(entity_queue_add=[EntityQueueRow(store.max_row_id() + 1, scheduler_id("Counter", "p1"),
                                                      request)]))
    store.close()
    async with DevHost(entity_app, state_dir=state_dir, port=0) as second:
        await settle(second, "@counter@p1")
        client = df.DurableOrchestrationClient(second.endpoints.client_binding())
        assert (await client.read_entity_state(df.EntityId("Counter", "p1"))).entity_state == 13
        assert await run(second, "counter_orchestrator", "p1") == 16
