"""The heal timer wakes or starts the reconciler of every app in the upload container (function_app on devhost)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from azure.functions.timer import TimerRequest

import function_app
from activities import functions as activity_functions
from devhost.host import DevHost
from orchestrations import starters


async def test_heal_timer_starts_then_wakes_reconcilers(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First tick starts one reconciler per app; the next tick wakes it (it looks again and heals), no duplicate."""
    looked: list[str] = []
    healed: list[str] = []

    def ingest(app: str) -> list:
        looked.append(app)
        return []

    def heal(app: str) -> dict:
        healed.append(app)
        return {"action": "none"}

    records = SimpleNamespace(list_apps=lambda: ["healme"], ingest=ingest, deletion=lambda app: None)
    svc = SimpleNamespace(records=records, apps=SimpleNamespace(heal=heal), read_manifest=lambda app: None)
    monkeypatch.setattr(starters, "services", lambda: svc)
    monkeypatch.setattr(activity_functions, "services", lambda: svc)
    host = DevHost(function_app.app, state_dir=tmp_path / "state", port=0)
    await host.start()
    try:
        entry = next(e for e in host.functions.timer if e.name == "heal_reconcilers")

        async def idle_after(count: int) -> None:
            for _ in range(200):
                rec = host.store.get("reconcile-healme")
                custom = json.loads(rec.custom_status_json or "null") if rec else None
                if len(looked) >= count and custom and custom.get("phase") == "idle":
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"reconciler not idle after {count} looks: {looked}")

        await host.invoke(entry, TimerRequest())
        await idle_after(1)
        await host.invoke(entry, TimerRequest())
        await idle_after(2)
        assert set(looked) == {"healme"} and len(healed) >= 2
    finally:
        await host.stop()
