"""What each replica reports: the file beside the manifest, refreshed on every sync; an unwritable store keeps
serving; the id, the flag, the stale rule and the reader's checks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE, create_app
from inference_server.config import ServerConfig
from inference_server.engines.base import EngineError
from inference_server.manifest import write_manifest
from inference_server.replica_state import (
    REPLICA_DIR,
    ReplicaReporter,
    ReplicaReportError,
    is_stale,
    parse_report,
    replica_id,
    stale_after_s,
)
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, start_client

REPLICA = "demo--rev1-646779b4c5-bhc2v"
UPDATED_AT = "2026-11-30T12:00:00+00:00"


@pytest.fixture(autouse=True)
def aca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", REPLICA)
    monkeypatch.setenv("CONTAINER_APP_REVISION", "demo--rev1")


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path) -> TestClient:
    make_adapter(tmp_path, "alpha-1", "alpha")
    manifest = publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    write_manifest(tmp_path, replace(manifest, updated_at=UPDATED_AT))
    return await start_client(aiohttp_client, server_config(adapter_store=tmp_path), EchoEngine())


async def synced_report(client: TestClient, store: Path) -> dict[str, Any]:
    """Sync through the admin API (it waits for any sync under way), then read the replica's file."""
    assert (await client.post("/admin/sync", headers=ADMIN)).status == 200
    return parse_report((store / REPLICA_DIR / f"{REPLICA}.json").read_bytes())


async def test_report_written_and_refreshed_on_every_sync(client: TestClient, tmp_path: Path) -> None:
    """The file names the replica, its loaded versions and alias target, the manifest it converged to; a refused
    new version shows in load_errors with the engine's reason while the old one serves; the heartbeat advances."""
    first = await synced_report(client, tmp_path)
    assert first["replica_id"] == REPLICA and first["revision"] == "demo--rev1"
    assert first["host"] == socket.gethostname() and isinstance(first["pid"], int)
    assert first["adapters"] == {"alpha": {"version": "alpha-1-v1",
                                           "sha256": client.app[STATE].registry.get("alpha").sha256}}
    assert (first["alias"], first["alias_target"], first["alias_version"]) == ("live", "alpha", "alpha-1-v1")
    assert first["converged"] is True and first["manifest_updated_at"] == UPDATED_AT
    assert first["load_errors"] == {} and first["engine_ready"] is True and first["last_sync_error"] is None
    assert first["sync_interval_s"] == 3600.0

    make_adapter(tmp_path, "alpha-2", "alpha two", bad=True)
    publish(tmp_path, {"alpha": "alpha-2"}, active="alpha", versions={"alpha": "v2"})
    await asyncio.sleep(0.01)
    second = await synced_report(client, tmp_path)
    assert datetime.fromisoformat(second["heartbeat_at"]) > datetime.fromisoformat(first["heartbeat_at"])
    assert second["started_at"] == first["started_at"]
    assert second["load_errors"]["alpha"]["version"] == "v2"
    assert "tensor shapes do not match" in second["load_errors"]["alpha"]["reason"]
    assert second["alias_version"] == "alpha-1-v1" and second["adapters"]["alpha"]["version"] == "alpha-1-v1"
    assert second["converged"] is False and second["manifest_updated_at"] is None
    assert sorted(p.name for p in (tmp_path / REPLICA_DIR).iterdir()) == [f"{REPLICA}.json"]  # no temp file left


async def test_interval_sync_refreshes_the_heartbeat(aiohttp_client, tmp_path: Path) -> None:
    """Without any admin call, the interval sync rewrites the file."""
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    await start_client(aiohttp_client, server_config(adapter_store=tmp_path, sync_interval_s=0.05), EchoEngine())
    path = tmp_path / REPLICA_DIR / f"{REPLICA}.json"
    beats: set[str] = set()
    for _ in range(200):
        if path.exists():
            beats.add(parse_report(path.read_bytes())["heartbeat_at"])
        if len(beats) >= 3:
            break
        await asyncio.sleep(0.02)
    assert len(beats) >= 3


async def test_graceful_stop_removes_the_report(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / REPLICA_DIR / f"{REPLICA}.json"
    await synced_report(client, tmp_path)
    await client.close()
    assert not path.exists()


async def test_unwritable_store_keeps_serving(aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    """The report's folder cannot be made (as on a read-only mount): chat and /ready go on, the failure is logged
    once over many syncs, and the report is written once the store allows it."""
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    (tmp_path / REPLICA_DIR).write_text("in the way")
    caplog.set_level(logging.INFO, logger="inference_server.replica_state")
    client = await start_client(aiohttp_client, server_config(adapter_store=tmp_path), EchoEngine())
    for _ in range(3):
        assert (await client.post("/admin/sync", headers=ADMIN)).status == 200
    assert (await client.post("/v1/chat/completions", json=chat_body("live"), headers=AUTH)).status == 200
    assert (await client.get("/ready", headers=AUTH)).status == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write the replica state" in warnings[0].getMessage()
    assert client.app[STATE].reporter.last_error.startswith("FileExistsError")

    (tmp_path / REPLICA_DIR).unlink()
    assert (await synced_report(client, tmp_path))["replica_id"] == REPLICA
    assert client.app[STATE].reporter.last_error is None
    assert any("written to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)


class FailingEngine(EchoEngine):
    async def start(self) -> None:
        raise EngineError("no GPU")


async def test_engine_that_fails_to_start_is_reported(aiohttp_client, tmp_path: Path) -> None:
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    await aiohttp_client(create_app(server_config(adapter_store=tmp_path), FailingEngine()))
    path = tmp_path / REPLICA_DIR / f"{REPLICA}.json"
    for _ in range(200):
        if path.exists() and parse_report(path.read_bytes())["last_sync_error"]:
            break
        await asyncio.sleep(0.01)
    report = parse_report(path.read_bytes())
    assert report["engine_ready"] is False and report["adapters"] == {}
    assert report["last_sync_error"] == "engine failed to start: no GPU"


def test_replica_state_dir_flag(tmp_path: Path) -> None:
    """Default `<store>/_replicas`; the flag or INFERENCE_REPLICA_STATE_DIR points elsewhere; `off` turns it off;
    without a store there is no default."""
    base = ["--model-path", "/m", "--adapter-store", str(tmp_path)]
    assert ServerConfig.from_args(base, {}).replica_state_path == tmp_path / REPLICA_DIR
    assert ServerConfig.from_args([*base, "--replica-state-dir", "/elsewhere"], {}).replica_state_path == \
        Path("/elsewhere")
    assert ServerConfig.from_args(base, {"INFERENCE_REPLICA_STATE_DIR": "off"}).replica_state_path is None
    assert ServerConfig.from_args(["--model-path", "/m"], {}).replica_state_path is None


async def test_off_writes_nothing(aiohttp_client, tmp_path: Path) -> None:
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    config = server_config(adapter_store=tmp_path, report_replica_state=False)
    client = await start_client(aiohttp_client, config, EchoEngine())
    assert (await client.post("/admin/sync", headers=ADMIN)).status == 200
    assert not (tmp_path / REPLICA_DIR).exists()


def test_replica_id_from_aca_else_host_and_pid() -> None:
    assert replica_id({"CONTAINER_APP_REPLICA_NAME": REPLICA}) == REPLICA
    assert replica_id({"CONTAINER_APP_REPLICA_NAME": "../a b/c"}) == "_a_b_c"
    own = replica_id({})
    assert own.startswith(socket.gethostname().replace(" ", "_")) and own.endswith(f"-{os.getpid()}")


def test_a_stopped_reporter_never_writes_again(tmp_path: Path) -> None:
    """A write that finishes after the stop (writes run in threads) does not bring the file back."""
    reporter = ReplicaReporter(tmp_path, "r1", 10.0)
    assert reporter.write({"adapters": {}, "load_errors": {}})
    reporter.remove()
    assert not reporter.write({"adapters": {}, "load_errors": {}})
    assert list(tmp_path.iterdir()) == []


def _report(heartbeat: datetime, interval: float = 10.0, **extra: Any) -> bytes:
    return json.dumps({"schema": 1, "replica_id": "r1", "heartbeat_at": heartbeat.isoformat(),
                       "sync_interval_s": interval, "adapters": {}, "load_errors": {}, **extra}).encode()


def test_stale_rule() -> None:
    """Stale: heartbeat older than max(3 × the replica's sync interval, 30 s)."""
    assert stale_after_s(0.5) == 30.0 and stale_after_s(10.0) == 30.0 and stale_after_s(20.0) == 60.0
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert not is_stale(parse_report(_report(now - timedelta(seconds=29.9), 0.5)), now)
    assert is_stale(parse_report(_report(now - timedelta(seconds=30.1), 0.5)), now)
    assert not is_stale(parse_report(_report(now - timedelta(seconds=59), 20.0)), now)
    assert is_stale(parse_report(_report(now - timedelta(seconds=61), 20.0)), now)
    assert not is_stale(parse_report(_report(now + timedelta(seconds=5))), now)  # the replica's clock is ahead


@pytest.mark.parametrize(("data", "says"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "JSON object"),
    (_report(datetime.now(UTC), schema=2), "schema"),
    (_report(datetime.now(UTC), replica_id=""), "replica_id"),
    (_report(datetime.now(UTC), interval=0), "sync_interval_s"),
    (_report(datetime.now(UTC), heartbeat_at="yesterday"), "heartbeat_at"),
    (_report(datetime.now(UTC), heartbeat_at="2026-11-30T12:00:00"), "heartbeat_at"),  # no offset
    (_report(datetime.now(UTC), adapters=[]), "adapters"),
    (b" " * (1 << 20) + b"{}", "bytes"),
])
def test_damaged_reports_are_refused_with_a_reason(data: bytes, says: str) -> None:
    with pytest.raises(ReplicaReportError, match=says):
        parse_report(data)


async def test_documented_report_is_the_written_one(client: TestClient, tmp_path: Path) -> None:
    """docs/rollouts.md's example report has exactly the fields a server writes, and reads as a report."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "rollouts.md").read_text(encoding="utf-8")
    example = doc.split("## What each replica reports", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    documented = parse_report(example.encode())
    assert sorted(documented) == sorted(await synced_report(client, tmp_path))


class SlowEngine(EchoEngine):
    """Starts only when `go` is set (a large model loading)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def start(self) -> None:
        await self.go.wait()
        await super().start()


async def test_a_starting_replica_reports_before_its_engine_is_up(aiohttp_client, tmp_path: Path) -> None:
    make_adapter(tmp_path, "alpha-1", "alpha")
    publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")
    engine = SlowEngine()
    await aiohttp_client(create_app(server_config(adapter_store=tmp_path), engine))
    path = tmp_path / REPLICA_DIR / f"{REPLICA}.json"
    for _ in range(200):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    starting = parse_report(path.read_bytes())
    assert starting["engine_ready"] is False and starting["converged"] is False and starting["adapters"] == {}
    engine.go.set()
    for _ in range(200):
        if parse_report(path.read_bytes())["converged"]:
            break
        await asyncio.sleep(0.01)
    assert parse_report(path.read_bytes())["adapters"]["alpha"]["version"] == "alpha-1-v1"
