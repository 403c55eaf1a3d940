"""Manifest convergence: new adapters, alias switches, retirement, bad adapters, replacement under load."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE
from inference_server.registry import AliasTargetError
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, start_client


@pytest.fixture
def engine() -> EchoEngine:
    return EchoEngine(tokens=4)


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, engine: EchoEngine) -> TestClient:
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    return await start_client(aiohttp_client, server_config(adapter_store=tmp_path), engine)


async def sync(client: TestClient) -> dict:
    resp = await client.post("/admin/sync", headers=ADMIN)
    assert resp.status == 200
    return await resp.json()


async def served(client: TestClient, model: str = "live") -> tuple[str, str | None]:
    """(reply's adapter label, X-Adapter-Version) for one request."""
    resp = await client.post("/v1/chat/completions", json=chat_body(model), headers=AUTH)
    assert resp.status == 200
    text = (await resp.json())["choices"][0]["message"]["content"]
    return text.split("]")[0][1:], resp.headers.get("X-Adapter-Version")


async def ready(client: TestClient) -> tuple[int, dict]:
    resp = await client.get("/ready", headers=AUTH)
    return resp.status, await resp.json()


async def test_new_adapter_and_alias_switch(client: TestClient, tmp_path: Path) -> None:
    """A new adapter in the manifest is loaded by sync; moving `active` moves the alias at once."""
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    make_adapter(tmp_path, "beta-1", "beta")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="alpha")
    report = await sync(client)
    assert report == {"ok": True, "loaded": ["beta"], "retired": [], "errors": {}, "active": "alpha"}
    assert await served(client, "beta") == ("beta-1", "beta-1-v1")
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="beta")
    assert (await sync(client))["loaded"] == []
    assert await served(client) == ("beta-1", "beta-1-v1")
    status, body = await ready(client)
    assert status == 200 and body["served_version"] == body["desired_version"] == "beta-1-v1"


async def test_retired_adapter_is_unloaded(client: TestClient, tmp_path: Path, engine: EchoEngine) -> None:
    """An adapter dropped from the manifest stops routing, then the engine frees it."""
    make_adapter(tmp_path, "beta-1", "beta")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="beta")
    await sync(client)
    publish(tmp_path, {"beta": "beta-1"}, active="beta")
    assert (await sync(client))["retired"] == ["alpha"]
    await client.app[STATE].registry.wait_freed()
    resp = await client.post("/v1/chat/completions", json=chat_body("alpha"), headers=AUTH)
    assert resp.status == 400
    assert [kind for kind, name in engine.events if name.startswith("alpha-")] == ["load", "unload"]
    assert len(engine.adapters) == 1


async def test_alias_to_base(client: TestClient, tmp_path: Path) -> None:
    """`active: null` routes the alias to the base model."""
    publish(tmp_path, {"alpha": "alpha-1"}, active=None)
    await sync(client)
    assert await served(client) == ("base", None)
    assert (await ready(client))[0] == 200


async def test_bad_adapter_keeps_previous(client: TestClient, tmp_path: Path) -> None:
    """A new version that fails to load leaves the previous one serving and shows the error in /ready."""
    make_adapter(tmp_path, "alpha-2", "alpha two", bad=True)
    publish(tmp_path, {"alpha": "alpha-2"}, active="alpha", versions={"alpha": "v2"})
    report = await sync(client)
    assert report["ok"] is False and "tensor shapes" in report["errors"]["alpha"]
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    status, body = await ready(client)
    assert status == 503
    assert body["served_version"] == "alpha-1-v1" and body["desired_version"] == "v2"
    assert "alpha: cannot load alpha-2" in body["last_sync_error"]
    make_adapter(tmp_path, "alpha-3", "alpha three")
    publish(tmp_path, {"alpha": "alpha-3"}, active="alpha", versions={"alpha": "v3"})
    assert (await sync(client))["ok"]
    assert await served(client) == ("alpha-3", "v3")
    assert (await ready(client))[0] == 200


async def test_new_active_failing_keeps_alias(client: TestClient, tmp_path: Path) -> None:
    """When the new active adapter fails, the alias stays on the old one even though the manifest dropped it."""
    make_adapter(tmp_path, "beta-1", "beta", bad=True)
    publish(tmp_path, {"beta": "beta-1"}, active="beta")
    report = await sync(client)
    assert report["retired"] == [] and report["active"] == "alpha"
    assert await served(client) == ("alpha-1", "alpha-1-v1")


async def test_digest_mismatch_is_refused(client: TestClient, tmp_path: Path, engine: EchoEngine) -> None:
    """A folder whose content digest differs from the manifest is never loaded."""
    make_adapter(tmp_path, "beta-1", "beta")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="beta", digests={"beta": "0" * 64})
    report = await sync(client)
    assert "does not match" in report["errors"]["beta"]
    assert not any(name.startswith("beta") for _, name in engine.events)
    assert "beta" in (await ready(client))[1]["last_sync_error"]


async def test_missing_folder_and_bad_manifest(client: TestClient, tmp_path: Path) -> None:
    """A missing folder or an unreadable manifest is reported; the served adapter stays."""
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    (tmp_path / "manifest.json").write_text(
        '{"adapters": {"x": {"path": "../etc", "sha256": "a", "version": "1"}}}'
    )
    report = await sync(client)
    assert "manifest" in report["errors"]
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    (tmp_path / "manifest.json").write_text(
        '{"adapters": {"x": {"path": "gone", "sha256": "a", "version": "1"}}}'
    )
    assert "not found" in (await sync(client))["errors"]["x"]


async def test_replacement_waits_for_in_flight(
    client: TestClient, tmp_path: Path, engine: EchoEngine
) -> None:
    """A new version replaces the old at once for new requests; the old is freed only after its stream ends."""
    engine.tokens, engine.delay_s = 10, 0.02
    resp = await client.post("/v1/chat/completions", json=chat_body("live", stream=True), headers=AUTH)
    await resp.content.readuntil(b"\n\n")
    make_adapter(tmp_path, "alpha-2", "alpha two")
    publish(tmp_path, {"alpha": "alpha-2"}, active="alpha", versions={"alpha": "v2"})
    await sync(client)
    old = [name for kind, name in engine.events if kind == "load"][0]
    assert old in engine.adapters  # still streaming on it
    engine.delay_s = 0
    assert await served(client) == ("alpha-2", "v2")
    text = await resp.text()
    assert "[alpha-1]" in text and text.endswith("data: [DONE]\n\n")
    await client.app[STATE].registry.wait_freed()
    assert old not in engine.adapters and ("unload", old) in engine.events


async def test_periodic_sync(aiohttp_client, tmp_path: Path) -> None:
    """Without an admin call the interval sync picks up a manifest change."""
    make_adapter(tmp_path, "alpha-1", "alpha")
    make_adapter(tmp_path, "beta-1", "beta")
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="alpha")
    client = await start_client(
        aiohttp_client, server_config(adapter_store=tmp_path, sync_interval_s=0.05), EchoEngine()
    )
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="beta")
    for _ in range(100):
        if (await served(client))[0] == "beta-1":
            break
        await asyncio.sleep(0.02)
    assert await served(client) == ("beta-1", "beta-1-v1")


async def test_alias_target_cannot_be_unloaded(client: TestClient) -> None:
    """Unloading the adapter the alias routes to is refused; it keeps serving."""
    with pytest.raises(AliasTargetError):
        await client.app[STATE].registry.unload("alpha")
    assert await served(client) == ("alpha-1", "alpha-1-v1")
