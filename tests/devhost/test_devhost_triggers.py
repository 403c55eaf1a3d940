"""Blob trigger polling: once per new or changed blob, path patterns, and the DevHost wiring."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from devhost.host import DevHost
from devhost.store import InstanceQuery
from devhost.timer_trigger import Schedule, ScheduleError
from devhost.triggers import BlobItem, BlobPath, BlobPathError, BlobPoller
from tests.devhost.apps.durable_samples import app, timer_ticks


class MemoryLister:
    """An in-memory BlobLister: container -> name -> (etag, data)."""

    def __init__(self) -> None:
        self.blobs: dict[str, dict[str, tuple[str, bytes]]] = {}

    def put(self, container: str, name: str, data: bytes) -> None:
        """Write a blob with a new etag."""
        old = self.blobs.setdefault(container, {}).get(name)
        self.blobs[container][name] = (f"etag-{int(old[0].split('-')[1]) + 1 if old else 1}", data)

    def list_blobs(self, container: str, prefix: str) -> Iterable[BlobItem]:
        """Blobs under ``prefix``."""
        return [BlobItem(n, e, len(d)) for n, (e, d) in self.blobs.get(container, {}).items() if n.startswith(prefix)]

    def read_blob(self, container: str, name: str) -> bytes:
        """Blob content."""
        return self.blobs[container][name][1]

    def blob_url(self, container: str, name: str) -> str:
        """A fake URL."""
        return f"memory://{container}/{name}"


def test_blob_path_matches_placeholders():
    """adapters/{app}/{name}: the first placeholder is one segment, the last takes the rest."""
    path = BlobPath.parse("adapters/{app}/{name}")
    assert (path.container, path.prefix) == ("adapters", "")
    assert path.match("chat/v1/adapter_config.json") == {"app": "chat", "name": "v1/adapter_config.json"}
    assert path.match("lonely") is None
    with pytest.raises(BlobPathError):
        BlobPath.parse("{container}/x")


async def test_poller_fires_once_per_etag(tmp_path):
    """A blob fires once; rewriting it fires again; a new poller with the receipts file does not refire."""
    lister = MemoryLister()
    fired: list[tuple[str, bytes, str]] = []

    async def on_blob(stream) -> None:
        fired.append((stream.name, stream.read(), stream.uri))

    receipts = tmp_path / "receipts.json"
    poller = BlobPoller("adapters/{app}/{name}", lister, on_blob, receipts_file=receipts)
    lister.put("adapters", "chat/a.bin", b"one")
    assert await poller.poll_once() == ["chat/a.bin"]
    assert await poller.poll_once() == []
    lister.put("adapters", "chat/a.bin", b"two")
    assert await poller.poll_once() == ["chat/a.bin"]
    assert fired == [("adapters/chat/a.bin", b"one", "memory://adapters/chat/a.bin"),
                     ("adapters/chat/a.bin", b"two", "memory://adapters/chat/a.bin")]
    again = BlobPoller("adapters/{app}/{name}", lister, on_blob, receipts_file=receipts)
    assert await again.poll_once() == []


async def test_devhost_blob_trigger_starts_orchestration(tmp_path):
    """The sample's blob function, given a durable client, starts record_blob with the blob's name."""
    lister = MemoryLister()
    lister.put("adapters", "chat/adapter.safetensors", b"x" * 7)
    host = DevHost(app, state_dir=tmp_path, blob_connection="memory", blob_lister_factory=lambda _: lister,
                   poll_interval=0.02)
    async with host:
        for _ in range(200):
            found = [r for r in host.store.query(InstanceQuery()) if r.name == "record_blob"]
            if found and found[0].status == "Completed":
                break
            await asyncio.sleep(0.02)
    assert json.loads(found[0].output_json) == {"name": "adapters/chat/adapter.safetensors", "size": 7}


@pytest.mark.parametrize(("expression", "expected"), [
    ("*/5 * * * * *", datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)),
    ("0 30 9 * * mon-fri", datetime(2026, 1, 1, 9, 30, tzinfo=UTC)),  # 2026-01-01 is a Thursday
    ("0 0 0 29 2 *", datetime(2028, 2, 29, tzinfo=UTC)),
    ("00:00:10", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
])
def test_schedule_next_occurrence(expression, expected):
    """NCRONTAB expressions and intervals give the next occurrence after midnight, 2026-01-01."""
    assert Schedule(expression).next_after(datetime(2026, 1, 1, tzinfo=UTC)) == expected


def test_bad_schedule_is_rejected():
    """Five fields (classic cron) are refused with ScheduleError."""
    with pytest.raises(ScheduleError, match="6 fields"):
        Schedule("*/5 * * * *")


async def test_devhost_runs_timer_on_startup(tmp_path):
    """A run_on_startup timer function fires once when the host starts, with a context."""
    timer_ticks.clear()
    async with DevHost(app, state_dir=tmp_path):
        for _ in range(100):
            if timer_ticks:
                break
            await asyncio.sleep(0.01)
    assert timer_ticks == [False]


@pytest.mark.azurite
async def test_blob_trigger_against_azurite(tmp_path):
    """With Azurite, an uploaded blob fires the sample's blob function once, through AzureBlobLister."""
    azurite = pytest.importorskip("devhost.azurite")
    from azure.storage.blob import BlobServiceClient

    try:
        emulator = azurite.Azurite().start()
    except azurite.AzuriteError as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    try:
        service = BlobServiceClient.from_connection_string(emulator.connection_string)
        service.create_container("adapters").upload_blob("chat/v1/adapter_config.json", b'{"r": 4}')
        async with DevHost(app, state_dir=tmp_path, blob_connection=emulator.connection_string,
                           poll_interval=0.05) as host:
            found = []
            for _ in range(300):
                found = [r for r in host.store.query(InstanceQuery()) if r.name == "record_blob"]
                if found and found[0].status == "Completed":
                    break
                await asyncio.sleep(0.02)
            assert len(host.pollers) == 1 and await host.pollers[0].poll_once() == []
    finally:
        emulator.stop()
    assert json.loads(found[0].output_json) == {"name": "adapters/chat/v1/adapter_config.json", "size": 8}
