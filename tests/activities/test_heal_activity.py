"""The heal_app activity on the local platform: a killed server is restarted; a failed restart is a permanent value."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from activities import functions
from activities.apps import LocalApps
from activities.platform.base import AppSpec
from activities.platform.local import LocalPlatform, LocalPlatformSettings

STANDIN = Path(__file__).resolve().parent / "standin_server.py"


def heal(monkeypatch: pytest.MonkeyPatch, platform: LocalPlatform, app: str, deleting: dict | None = None) -> dict:
    """Run the heal_app activity function with `platform` as the services' apps (`deleting`: the app's deletion
    marker, as `DeploymentRecords.deletion` returns it)."""
    apps = LocalApps(platform, lambda name: AppSpec(app=name, image="local"))
    records = SimpleNamespace(deletion=lambda name: deleting if name == app else None)
    monkeypatch.setattr(functions, "services", lambda: SimpleNamespace(apps=apps, records=records))
    return functions.heal_app.build().get_user_function()({"app": app})


def test_heal_app_activity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """none for a healthy or unknown app; restarted with the reason after a crash; ok false when it cannot start."""
    settings = LocalPlatformSettings(
        state_dir=tmp_path / "state",
        store_root=tmp_path / "store",
        server_command=(sys.executable, str(STANDIN)),
        start_timeout=20.0,
        stop_timeout=5.0,
    )
    platform = LocalPlatform(settings)
    try:
        assert heal(monkeypatch, platform, "chat") == {"ok": True, "action": "none"}
        state = platform.ensure_app(AppSpec(app="chat", image="local")).state
        assert heal(monkeypatch, platform, "chat") == {"ok": True, "action": "none"}
        os.kill(_pid(state.endpoint), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while platform.describe_app("chat").running and time.monotonic() < deadline:
            time.sleep(0.05)
        marker = {"id": "delete-chat.20260101T000000000000", "requested_at": "2026-01-01T00:00:00+00:00"}
        assert heal(monkeypatch, platform, "chat", deleting=marker) == {"ok": True, "action": "none"}
        assert not platform.describe_app("chat").running  # an app being deleted is not brought back
        healed = heal(monkeypatch, platform, "chat")
        assert healed == {"ok": True, "action": "restarted", "reason": "process exited with code -9 (SIGKILL)"}
        assert platform.describe_app("chat").endpoint == state.endpoint

        os.kill(_pid(state.endpoint), signal.SIGKILL)
        broken = LocalPlatform(replace(settings, server_command=(sys.executable, "-c", "raise SystemExit('no GPU')")))
        failed = heal(monkeypatch, broken, "chat")
        assert failed["ok"] is False and "no GPU" in failed["reason"]
    finally:
        platform.stop_all()


def _pid(endpoint: str | None) -> int:
    """The stand-in server's pid, from its /health."""
    return int(requests.get(f"{endpoint}/health", timeout=5).json()["pid"])
