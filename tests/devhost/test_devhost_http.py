"""HTTP front: app functions under /api/ and the Durable HTTP API, driven by the SDK's real client."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiohttp
import pytest

from devhost.http_front import WEBHOOK_PATH, route_paths


@pytest.fixture
async def http(devhost):
    """An aiohttp session for the running devhost."""
    async with aiohttp.ClientSession(base_url=devhost.url) as session:
        yield session


async def poll_status(http: aiohttp.ClientSession, url: str, timeout: float = 10) -> dict:
    """GET the status URL until it stops answering 202."""
    for _ in range(int(timeout / 0.02)):
        async with http.get(url) as resp:
            if resp.status != 202:
                assert resp.status == 200
                return await resp.json()
        await asyncio.sleep(0.02)
    raise TimeoutError(url)


async def test_http_starter_returns_check_status_response(devhost, http):
    """The starter's create_check_status_response gives 202, Location and working management URLs."""
    async with http.post("/api/orchestrators/fan_out_fan_in", json=[1, 2, 3]) as resp:
        assert resp.status == 202
        payload = await resp.json()
        assert resp.headers["Location"] == payload["statusQueryGetUri"]
    assert payload["statusQueryGetUri"].startswith(f"{devhost.url}{WEBHOOK_PATH}/instances/{payload['id']}?")
    status = await poll_status(http, payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed" and status["output"] == 14
    assert status["input"] == [1, 2, 3] and status["instanceId"] == payload["id"]
    assert status["createdTime"].endswith("Z") and status["lastUpdatedTime"].endswith("Z")


async def test_sdk_client_status_list_filter_raise_terminate(devhost, http):
    """get_status (history, input), get_status_all, get_status_by, raise_event and terminate via the SDK."""
    async with http.post("/api/orchestrators/approval", json=30) as resp:
        waiting = (await resp.json())["id"]
    async with http.post("/api/orchestrators/approval", json=30) as resp:
        doomed = (await resp.json())["id"]
    async with http.post("/api/orchestrators/hello_chain") as resp:
        chained = (await resp.json())["id"]
    await devhost.worker.wait_for(chained, 5)
    async with http.get(f"/api/manage/{chained}/status") as resp:
        status = await resp.json()
    assert status["runtimeStatus"] == "Completed" and status["history_len"] > 0
    async with http.get("/api/manage/x/all") as resp:
        assert set((await resp.json())["ids"]) == {waiting, doomed, chained}
    while any(devhost.store.get(i).status == "Pending" for i in (waiting, doomed)):
        await asyncio.sleep(0.01)
    async with http.get("/api/manage/x/running") as resp:
        assert (await resp.json())["ids"] == sorted([waiting, doomed])
    async with http.post(f"/api/manage/{waiting}/raise?event=Approval", json={"ok": 1}) as resp:
        assert resp.status == 200
    async with http.post(f"/api/manage/{doomed}/terminate?reason=bye") as resp:
        assert resp.status == 200
    approved = await devhost.worker.wait_for(waiting, 5)
    terminated = await devhost.worker.wait_for(doomed, 5)
    assert json.loads(approved.output_json) == {"approved": {"ok": 1}}
    assert (terminated.status, json.loads(terminated.output_json)) == ("Terminated", "bye")


async def test_webhook_status_codes(devhost, http):
    """Unknown instance 404, unknown orchestrator 400, duplicate running id 500 (as the extension), finished 410."""
    base = WEBHOOK_PATH
    async with http.get(f"{base}/instances/nope") as resp:
        assert resp.status == 404
    async with http.post(f"{base}/orchestrators/nope") as resp:
        assert resp.status == 400 and "nope" in (await resp.json())["ExceptionMessage"]
    async with http.post(f"{base}/orchestrators/approval", data="not json") as resp:
        assert resp.status == 400 and "application/json" in (await resp.json())["ExceptionMessage"]
    async with http.post(f"{base}/orchestrators/approval/fixed-id", json="30") as resp:
        assert resp.status == 202
    async with http.post(f"{base}/orchestrators/approval/fixed-id", json="30") as resp:
        body = await resp.json()
        assert resp.status == 500 and body["Message"] == "Something went wrong while processing your request"
        assert "already exists" in body["ExceptionMessage"]
    async with http.post(f"{base}/orchestrators/approval/@bad", json="30") as resp:
        assert resp.status == 400
    async with http.post(f"{base}/instances/fixed-id/terminate?reason=x") as resp:
        assert resp.status == 202
    await devhost.worker.wait_for("fixed-id", 5)
    async with http.post(f"{base}/instances/fixed-id/raiseEvent/Approval", json="1") as resp:
        assert resp.status == 410
    async with http.post(f"{base}/instances/nope/terminate?reason=x") as resp:
        assert resp.status == 404
    async with http.delete(f"{base}/instances/fixed-id") as resp:
        assert resp.status == 200 and (await resp.json()) == {"instancesDeleted": 1}
    async with http.get(f"{base}/instances/fixed-id") as resp:
        assert resp.status == 404


async def test_list_pages_with_continuation_token(devhost, http):
    """top=2 pages through three instances with the x-ms-continuation-token header."""
    ids = [devhost.worker.start_new("hello_chain") for _ in range(3)]
    for instance_id in ids:
        await devhost.worker.wait_for(instance_id, 5)
    seen: list[str] = []
    token = None
    for _ in range(3):
        headers = {"x-ms-continuation-token": token} if token else {}
        async with http.get(f"{WEBHOOK_PATH}/instances/?top=2&runtimeStatus=Completed", headers=headers) as resp:
            seen += [s["instanceId"] for s in await resp.json()]
            token = resp.headers.get("x-ms-continuation-token")
        if not token:
            break
    assert sorted(seen) == sorted(ids)


async def test_list_filters_by_created_time(devhost, http):
    """createdTimeFrom/createdTimeTo (the SDK's format) bound the listed instances."""
    first = devhost.worker.start_new("hello_chain")
    await devhost.worker.wait_for(first, 5)
    await asyncio.sleep(0.01)
    boundary = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await asyncio.sleep(0.01)
    second = devhost.worker.start_new("hello_chain")
    await devhost.worker.wait_for(second, 5)
    async with http.get(f"{WEBHOOK_PATH}/instances/?createdTimeFrom={boundary}") as resp:
        assert [s["instanceId"] for s in await resp.json()] == [second]
    async with http.get(f"{WEBHOOK_PATH}/instances/?createdTimeTo={boundary}") as resp:
        assert [s["instanceId"] for s in await resp.json()] == [first]


async def test_plain_http_function_gets_route_params_query_and_headers(http):
    """A sync HTTP function sees route params and query; its headers come back."""
    async with http.get("/api/hello/ada?x=1") as resp:
        assert resp.status == 200 and await resp.text() == "hi ada 1"
        assert resp.headers["X-Sample"] == "1"
    async with http.post("/api/hello/ada") as resp:
        assert resp.status == 405


async def test_request_bodies_up_to_the_functions_host_limit_reach_the_function(http):
    """Bodies are capped as the Functions host caps them (100 MB by default), not at aiohttp's 1 MiB: a 2 MiB body
    reaches the function (here: a status read that ignores it)."""
    async with http.post("/api/manage/nobody/status", data=b"x" * (2 << 20)) as resp:
        assert resp.status == 200 and (await resp.json())["missing"] is True


def test_route_templates_become_aiohttp_paths():
    """Constraints are dropped, optional segments give two paths, catch-alls match the rest."""
    assert route_paths("apps/{app}/deployments") == ["/api/apps/{app}/deployments"]
    assert route_paths("items/{id:int}/{name?}") == ["/api/items/{id}/{name}", "/api/items/{id}"]
    assert route_paths("files/{*path}", prefix="") == ["/files/{path:.*}"]
