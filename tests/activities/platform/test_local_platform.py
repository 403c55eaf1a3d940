"""LocalPlatform with the aiohttp stand-in as the server process: start, no-op, spec change, restart, recovery."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from activities.platform.aca import AppNotFoundError
from activities.platform.base import AppSpec, PlatformError
from activities.platform.local import LocalPlatform, LocalPlatformSettings

STANDIN = Path(__file__).resolve().parents[1] / "standin_server.py"
SPEC = AppSpec(
    app="chat",
    image="local",
    base_model="tiny-llama",
    env={"EXTRA": "1"},
    secrets={"inference-api-keys": "k1,k2"},
)


@pytest.fixture
def settings(tmp_path: Path) -> LocalPlatformSettings:
    """Settings running the stand-in script instead of the real server."""
    return LocalPlatformSettings(
        state_dir=tmp_path / "state",
        store_root=tmp_path / "store",
        model_path=tmp_path / "model",
        server_command=(sys.executable, str(STANDIN)),
        start_timeout=20.0,
        stop_timeout=5.0,
    )


@pytest.fixture
def platform(settings: LocalPlatformSettings) -> Iterator[LocalPlatform]:
    """A platform whose apps are all stopped after the test."""
    p = LocalPlatform(settings)
    yield p
    p.stop_all()


def health(endpoint: str) -> dict:
    return requests.get(f"{endpoint}/health", timeout=5).json()


def test_ensure_starts_with_flags_and_secrets(
    platform: LocalPlatform, settings: LocalPlatformSettings
) -> None:
    """The first ensure starts the server with the documented flags, the secrets as env, revision 1."""
    result = platform.ensure_app(SPEC)
    assert result.changed and result.state.running and result.state.revision == "chat--1"
    info = health(result.state.endpoint or "")
    argv = info["argv"]
    assert argv[argv.index("--base-model-name") + 1] == "tiny-llama"
    assert argv[argv.index("--adapter-store") + 1] == str(settings.store_root / "chat")
    assert argv[argv.index("--engine") + 1] == "transformers"
    assert info["api_keys"] == "k1,k2"
    state_file = settings.state_dir / "chat.json"
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"


def test_ensure_unchanged_is_noop(platform: LocalPlatform) -> None:
    """A second ensure with the same spec leaves the same process running."""
    first = platform.ensure_app(SPEC)
    pid = health(first.state.endpoint or "")["pid"]
    second = platform.ensure_app(SPEC)
    assert not second.changed and second.state == first.state
    assert health(second.state.endpoint or "")["pid"] == pid


def test_spec_change_restarts(platform: LocalPlatform) -> None:
    """A changed spec (a rotated secret) restarts the process as a new revision on the same port."""
    first = platform.ensure_app(SPEC)
    pid = health(first.state.endpoint or "")["pid"]
    second = platform.ensure_app(replace(SPEC, secrets={"inference-api-keys": "k3"}))
    assert second.changed and second.state.revision == "chat--2"
    assert second.state.endpoint == first.state.endpoint
    info = health(second.state.endpoint or "")
    assert info["pid"] != pid and info["api_keys"] == "k3"


def test_restart_app_new_revision(platform: LocalPlatform) -> None:
    """restart_app stops and starts the recorded spec as the next revision."""
    first = platform.ensure_app(SPEC)
    pid = health(first.state.endpoint or "")["pid"]
    state = platform.restart_app("chat")
    assert state.revision == "chat--2" and state.running
    assert health(state.endpoint or "")["pid"] != pid
    with pytest.raises(AppNotFoundError):
        platform.restart_app("never")


def test_dead_process_restarted(platform: LocalPlatform) -> None:
    """A crashed server is seen as not running and ensure starts it again."""
    first = platform.ensure_app(SPEC)
    os.kill(health(first.state.endpoint or "")["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while platform.describe_app("chat").running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not platform.describe_app("chat").running
    again = platform.ensure_app(SPEC)
    assert again.changed and again.state.running and again.state.revision == "chat--2"


def test_new_host_finds_running_process(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """A fresh LocalPlatform on the same state dir (a restarted host) sees the process and does not restart it."""
    first = platform.ensure_app(SPEC)
    other = LocalPlatform(settings)
    result = other.ensure_app(SPEC)
    assert not result.changed and result.state.endpoint == first.state.endpoint
    other.stop_all()
    assert not platform.describe_app("chat").exists


def test_describe_missing_and_stop_all(platform: LocalPlatform) -> None:
    """An unknown app does not exist; stop_all ends every process and forgets it."""
    assert not platform.describe_app("chat").exists
    state = platform.ensure_app(SPEC).state
    pid = health(state.endpoint or "")["pid"]
    assert platform.stop_all() == ["chat"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_failed_start_reports_log(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """A server that exits at start raises PlatformError with its output."""
    broken = LocalPlatform(
        replace(settings, server_command=(sys.executable, "-c", "raise SystemExit('no model here')"))
    )
    with pytest.raises(PlatformError, match="no model here"):
        broken.ensure_app(SPEC)
    saved = json.loads((settings.state_dir / "chat.json").read_text())
    assert saved["revision"] == 1
