"""Helpers for end-to-end tests on the embedded default: adapter variants, following rollouts, chatting."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import requests

from adapterctl.api import stream_chat
from adapterctl.follow import follow

TIMEOUT = 180.0


def variant(src: Path, dest: Path, **config_changes: Any) -> Path:
    """A copy of adapter `src` with `adapter_config.json` fields changed (new content, same weights)."""
    shutil.copytree(src, dest)
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(config_changes)
    config_path.write_text(json.dumps(config))
    return dest


def deploy(stack, app: str, folder: Path, name: str | None = None) -> dict[str, Any]:
    """Upload a folder and follow its deployment record to its terminal stage; returns the final record."""
    uploaded = stack.store.upload_adapter_folder(folder, app, name or folder.name)
    return follow(stack.api, uploaded.deployment_id, TIMEOUT, lambda _: None, interval=0.1)


def rollout_of_adapter(stack, app: str, adapter: str, after: str = "") -> dict[str, Any]:
    """Wait for the newest record of `adapter` accepted after `after` (ISO), then follow it to its end."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for record in stack.api.deployments(app):
            if record.get("adapter") == adapter and (record.get("accepted_at") or "") > after:
                return follow(stack.api, record["id"], TIMEOUT, lambda _: None, interval=0.1)
        time.sleep(0.1)
    raise TimeoutError(f"no rollout of {adapter} on {app}")


def chat(stack, app: str, model: str = "live") -> str:
    endpoint = stack.api.app(app)["endpoint"]
    return "".join(stream_chat(endpoint, stack.api_key, model, "Hello there!", temperature=0, max_tokens=24))


def wait_idle(stack, app: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Wait until the app's reconciler is idle (nothing left to roll out); returns the app record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = stack.api.app(app)
        reconciler = info.get("reconciler") or {}
        if reconciler.get("phase") == "idle":
            return info
        time.sleep(0.2)
    raise TimeoutError(f"reconciler of {app} never went idle")


def listed(stack, app: str) -> dict[str, dict[str, Any]]:
    """The local revision runner's replicas file: name -> pid, port, up."""
    path = Path(stack.env["DEVHOST_STATE_DIR"]) / "platform" / f"{app}.replicas"
    return json.loads(path.read_text())["replicas"]


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.2)


def served_version(stack, port: int) -> str | None:
    """The alias's version as one replica (its own port) says on /ready."""
    answer = requests.get(f"http://127.0.0.1:{port}/ready", headers={"Authorization": f"Bearer {stack.api_key}"},
                          timeout=10)
    return answer.json().get("served_version")
