"""Manifest convergence: new adapters, alias switches, retirement, bad adapters, replacement under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE, create_app
from inference_server.registry import AliasTargetError
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, start_client
from tests.inference_image.test_server_errors import assert_error


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
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
    assert [kind for kind, name in engine.events if name.startswith("alpha-")] == ["load", "unload"]
    assert len(engine.adapters) == 1


async def test_dropped_adapters_make_room_before_new_ones_load(aiohttp_client, tmp_path: Path) -> None:
    """An engine full to its limit takes the manifest's new adapter: what the manifest dropped is freed first
    (found by bench/soak.py: with 8 adapters every new deploy was refused)."""
    engine = EchoEngine(max_adapters=2)
    for label in ("alpha", "beta", "gamma"):
        make_adapter(tmp_path, f"{label}-1", label)
    publish(tmp_path, {"alpha": "alpha-1", "beta": "beta-1"}, active="beta")
    client = await start_client(aiohttp_client, server_config(adapter_store=tmp_path), engine)
    publish(tmp_path, {"beta": "beta-1", "gamma": "gamma-1"}, active="gamma")
    report = await sync(client)
    assert report["errors"] == {} and report["retired"] == ["alpha"] and report["loaded"] == ["gamma"]
    assert await served(client) == ("gamma-1", "gamma-1-v1")


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
    """When the new active adapter fails, the alias stays on the old one even though the manifest dropped it;
    /ready is 503 and its load_errors carry the refused entry."""
    make_adapter(tmp_path, "beta-1", "beta", bad=True)
    manifest = publish(tmp_path, {"beta": "beta-1"}, active="beta")
    report = await sync(client)
    assert report["retired"] == [] and report["active"] == "alpha"
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    status, body = await ready(client)
    assert status == 503 and body["served_version"] == "alpha-1-v1"
    assert body["load_errors"] == {"beta": {"version": "beta-1-v1", "sha256": manifest.adapters["beta"].sha256,
                                            "reason": "cannot load beta-1: tensor shapes do not match"}}


async def test_load_errors_contract(client: TestClient, tmp_path: Path) -> None:
    """`load_errors` (keyed requests only) lists each manifest adapter the latest sync refused, with the manifest's
    version and sha256 and the engine's reason; an adapter that loads later leaves it; no key: `ready` alone."""
    assert (await ready(client))[1]["load_errors"] == {}
    make_adapter(tmp_path, "alpha-2", "alpha two", bad=True)
    make_adapter(tmp_path, "beta-1", "beta", bad=True)
    manifest = publish(tmp_path, {"alpha": "alpha-2", "beta": "beta-1"}, active="alpha", versions={"alpha": "v2"})
    await sync(client)
    status, body = await ready(client)
    assert status == 503
    assert body["load_errors"] == {
        name: {"version": entry.version, "sha256": entry.sha256, "reason": f"cannot load {entry.path}: tensor shapes do not match"}
        for name, entry in manifest.adapters.items()
    }
    assert await (await client.get("/ready")).json() == {"ready": False}
    make_adapter(tmp_path, "alpha-3", "alpha three")
    publish(tmp_path, {"alpha": "alpha-3", "beta": "beta-1"}, active="alpha", versions={"alpha": "v3"})
    await sync(client)
    status, body = await ready(client)
    assert status == 200 and set(body["load_errors"]) == {"beta"}  # the active one converged; beta still refused
    publish(tmp_path, {"alpha": "alpha-3"}, active="alpha", versions={"alpha": "v3"})
    await sync(client)
    assert (await ready(client))[1]["load_errors"] == {}


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


async def assert_alias_unavailable(client: TestClient, *fragments: str) -> None:
    """The alias answers 503 in OpenAI's error shape (never the base model); /ready is 503."""
    resp = await client.post("/v1/chat/completions", json=chat_body("live"), headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    body = await resp.json()
    assert_error(body, code="adapter_unavailable")
    assert all(f in body["error"]["message"] for f in fragments), body
    status, detail = await ready(client)
    assert status == 503 and detail["served_model"] is None and detail["served_version"] is None


async def test_start_with_refused_active_never_serves_base(aiohttp_client, tmp_path: Path) -> None:
    """After a (re)start whose active adapter is refused, the alias answers 503 naming the adapter and the load
    error, not the base model; the base model's own name still serves; a good version then serves the alias."""
    make_adapter(tmp_path, "alpha-1", "alpha", bad=True)
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    client = await start_client(aiohttp_client, server_config(adapter_store=tmp_path), EchoEngine())
    await assert_alias_unavailable(client, "'live'", "'alpha'", "alpha-1-v1", "tensor shapes do not match")
    assert (await ready(client))[1]["load_errors"]["alpha"]["version"] == "alpha-1-v1"
    assert await served(client, "tiny") == ("base", None)
    make_adapter(tmp_path, "alpha-2", "alpha two")
    publish(tmp_path, {"alpha": "alpha-2"}, active="alpha", versions={"alpha": "v2"})
    await sync(client)
    assert await served(client) == ("alpha-2", "v2")
    assert (await ready(client))[0] == 200


async def test_alias_unavailable_until_first_load(aiohttp_client, tmp_path: Path) -> None:
    """While the first sync is still loading the active adapter, the alias answers 503 (not the base model)."""
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    engine = EchoEngine()
    engine.load_gate = asyncio.Event()
    app = create_app(server_config(adapter_store=tmp_path), engine)
    client = await aiohttp_client(app)
    await until(lambda: app[STATE].started)
    await assert_alias_unavailable(client, "'live'", "not been read yet")
    engine.load_gate.set()
    await until(lambda: app[STATE].syncer.last_sync_at is not None)
    assert await served(client) == ("alpha-1", "alpha-1-v1")


async def test_alias_means_base_only_without_active(aiohttp_client, tmp_path: Path) -> None:
    """An adapter store without a manifest, or a manifest with no active adapter, makes the alias the base model;
    a refused active adapter after that is not papered over with the base model."""
    client = await start_client(aiohttp_client, server_config(adapter_store=tmp_path), EchoEngine())
    assert await served(client) == ("base", None) and (await ready(client))[0] == 200
    make_adapter(tmp_path, "alpha-1", "alpha", bad=True)
    publish(tmp_path, {"alpha": "alpha-1"}, active=None)
    await sync(client)
    assert await served(client) == ("base", None)
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    await sync(client)
    await assert_alias_unavailable(client, "'alpha'", "tensor shapes do not match")


async def test_removed_manifest_means_the_base_model(client: TestClient, tmp_path: Path, engine: EchoEngine) -> None:
    """The manifest removed (a first deploy rolled back): the alias leaves the adapter for the base model, the
    adapter is retired, and /ready is 200 again."""
    assert await served(client) == ("alpha-1", "alpha-1-v1")
    (tmp_path / "manifest.json").unlink()
    report = await sync(client)
    assert report["retired"] == ["alpha"] and report["active"] is None
    assert await served(client) == ("base", None) and (await ready(client))[0] == 200


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
