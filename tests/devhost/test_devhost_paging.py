"""Instance queries page as the Durable extension pages them (100 a page, ``x-ms-continuation-token``),
and the SDK's ``DurableOrchestrationClient`` calls the deploy app uses answer as on the real host."""

from __future__ import annotations

import json

import aiohttp
import azure.durable_functions as df
import pytest

from devhost import history as h
from devhost.http_front import PAGE_SIZE, WEBHOOK_PATH
from devhost.store import Batch, InstanceRecord

TOKEN = "x-ms-continuation-token"


def _seed(devhost, count: int, prefix: str = "seed") -> list[str]:
    """``count`` completed instances written straight to the store (same created time for some)."""
    now = h.format_time(h.utc_now())
    records = [InstanceRecord(f"{prefix}-{n:04d}", "hello_chain", "Completed", json.dumps({"n": n}),
                              json.dumps("done"), None, now if n % 3 else h.format_time(h.utc_now()), now)
               for n in range(count)]
    devhost.store.apply(Batch(instances=records))
    return [r.id for r in records]


@pytest.fixture
async def http(devhost):
    async with aiohttp.ClientSession(base_url=devhost.url) as session:
        yield session


async def test_list_pages_at_100_with_continuation_token(devhost, http):
    """250 instances: pages of 100, 100, 50; the token continues, empty on the last page; no repeats."""
    ids = _seed(devhost, 250)
    seen: list[str] = []
    sizes: list[int] = []
    token = None
    for _ in range(5):
        headers = {TOKEN: token} if token else {}
        async with http.get(f"{WEBHOOK_PATH}/instances/", headers=headers) as resp:
            assert resp.status == 200
            page = await resp.json()
            token = resp.headers[TOKEN]  # always present, as the extension always adds it
        sizes.append(len(page))
        seen += [s["instanceId"] for s in page]
        assert all(s["input"] is not None for s in page)  # showInput defaults to true in lists
        if not token:
            break
    assert sizes == [PAGE_SIZE, PAGE_SIZE, 50]
    assert len(seen) == len(set(seen)) and set(seen) == set(ids)


async def test_list_top_show_input_and_filters_page_together(devhost, http):
    """top sets the page size; showInput=false hides inputs; the token keeps the filters' order."""
    _seed(devhost, 30, "a")
    b_ids = _seed(devhost, 30, "b")
    url = f"{WEBHOOK_PATH}/instances?instanceIdPrefix=b-&top=7&showInput=false&runtimeStatus=Completed,Failed"
    seen: list[str] = []
    token = ""
    while True:
        async with http.get(url, headers={TOKEN: token} if token else {}) as resp:
            page = await resp.json()
            token = resp.headers[TOKEN]
        assert len(page) <= 7 and all(s["input"] is None for s in page)
        seen += [s["instanceId"] for s in page]
        if not token:
            break
    assert sorted(seen) == sorted(b_ids) and len(seen) == 30
    async with http.get(f"{WEBHOOK_PATH}/instances", headers={TOKEN: "not a token"}) as resp:
        assert resp.status == 400


async def test_sdk_list_calls_return_the_first_page(devhost):
    """The SDK's get_status_all/get_status_by send no continuation token: they get the first 100,
    exactly as against the real host."""
    _seed(devhost, 120)
    client = df.DurableOrchestrationClient(devhost.endpoints.client_binding())
    assert len(await client.get_status_all()) == PAGE_SIZE
    by = await client.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Completed])
    assert len(by) == PAGE_SIZE and all(s.input_ is not None for s in by)
    assert await client.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Running]) == []


async def test_sdk_client_start_status_raise_terminate(devhost):
    """start_new (fixed id; again while running raises, from the 500), get_status, raise_event, terminate."""
    client = df.DurableOrchestrationClient(devhost.endpoints.client_binding())
    assert await client.start_new("approval", "appr-1", 30) == "appr-1"
    with pytest.raises(Exception, match="already exists"):
        await client.start_new("approval", "appr-1", 30)
    with pytest.raises(Exception, match="does not exist"):
        await client.start_new("no_such_orchestrator", None, None)
    status = await client.get_status("appr-1", show_input=True)
    assert status.instance_id == "appr-1" and status.input_ == 30
    assert status.runtime_status in (df.OrchestrationRuntimeStatus.Pending, df.OrchestrationRuntimeStatus.Running)
    await client.raise_event("appr-1", "Approval", {"ok": True})
    done = await devhost.worker.wait_for("appr-1", 5)
    assert json.loads(done.output_json) == {"approved": {"ok": True}}
    status = await client.get_status("appr-1")
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed
    with pytest.raises(Exception, match="is gone"):  # 410: the instance finished
        await client.raise_event("appr-1", "Approval", 1)
    await client.start_new("approval", "appr-1", 30)  # a finished id may be started again
    await client.start_new("approval", "appr-2", 30)
    await client.terminate("appr-2", "bye")
    ended = await devhost.worker.wait_for("appr-2", 5)
    assert (ended.status, json.loads(ended.output_json)) == ("Terminated", "bye")
    missing = await client.get_status("nope")
    assert missing.instance_id is None or missing.runtime_status is None
