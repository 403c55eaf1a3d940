"""LocalPlatform with several replicas per app: the revision runner (activities/platform/local_revision.py) starts
them behind a front that spreads requests round-robin, restarts a killed one under its name, stops them all on
SIGTERM; `list_replicas` follows their processes. The replicas are the stand-in server (replica_standin.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from activities.config import ConfigError, Settings
from activities.platform.base import ADMIN_KEY_SECRET, AppSpec
from activities.platform.local import LocalPlatform, LocalPlatformSettings
from tests.activities.platform.test_local_platform import FAKE_DOCKER, STANDIN, docker_calls, environ

REPLICA_STANDIN = Path(__file__).resolve().parent / "replica_standin.py"
SPEC = AppSpec(app="chat", image="local", base_model="tiny-llama", secrets={"inference-api-keys": "k1"},
               generated_secrets=(ADMIN_KEY_SECRET,))
NAMES = ["chat--1-0", "chat--1-1", "chat--1-2"]


@pytest.fixture
def settings(tmp_path: Path) -> LocalPlatformSettings:
    return LocalPlatformSettings(state_dir=tmp_path / "state", store_root=tmp_path / "store",
                                 model_path=tmp_path / "model", server_command=(sys.executable, str(REPLICA_STANDIN)),
                                 start_timeout=30.0, stop_timeout=5.0, replicas=3)


@pytest.fixture
def platform(settings: LocalPlatformSettings) -> Iterator[LocalPlatform]:
    p = LocalPlatform(settings)
    yield p
    p.stop_all()


def wait_for(check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {check}")


def replica_pids(platform: LocalPlatform, app: str = "chat") -> dict[str, int]:
    """Name -> pid of the replicas the runner lists in its replicas file."""
    listed = json.loads((platform.settings.state_dir / f"{app}.replicas").read_text())["replicas"]
    return {name: info["pid"] for name, info in listed.items()}


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_replicas_start_named_and_share_requests(platform: LocalPlatform) -> None:
    """Three replicas `<app>--1-<i>`, each with its name (report id) and the secrets in its environment, none in a
    command line; 30 requests through the front reach each replica 10 times, with the Authorization header."""
    state = platform.ensure_app(SPEC).state
    assert state.running and state.replicas == 3 and platform.list_replicas("chat") == NAMES
    pids = replica_pids(platform)
    for name, pid in pids.items():
        env = environ(pid)
        assert env["CONTAINER_APP_REPLICA_NAME"] == name and env["CONTAINER_APP_REVISION"] == "chat--1"
        assert env["INFERENCE_API_KEYS"] == "k1" and "k1" not in Path(f"/proc/{pid}/cmdline").read_text()
    answers = [requests.get(f"{state.endpoint}/whoami", headers={"Authorization": "Bearer k1"}, timeout=5).json()
               for _ in range(30)]
    assert Counter(a["replica"] for a in answers) == {name: 10 for name in NAMES}
    assert {a["authorization"] for a in answers} == {"Bearer k1"}
    assert {a["pid"] for a in answers} == set(pids.values())
    log = (platform.settings.state_dir / "chat.log").read_text()
    assert all(f"[revision runner] {name} is up" in log for name in NAMES)


def test_streaming_passes_through_unbuffered(platform: LocalPlatform) -> None:
    """An SSE answer's first event reaches the client while the replica still writes the rest."""
    endpoint = platform.ensure_app(SPEC).state.endpoint
    started = time.monotonic()
    with requests.get(f"{endpoint}/stream?n=4&gap=0.5", stream=True, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        lines = answer.iter_lines()
        first = next(line for line in lines if line)
        first_at = time.monotonic() - started
        rest = [line for line in lines if line]
    total = time.monotonic() - started
    assert first.startswith(b"data: 0 chat--1-") and rest[-1] == b"data: [DONE]"
    assert first_at < 1.0 and total >= 1.9, (first_at, total)


def test_a_killed_replica_is_restarted_under_its_name(platform: LocalPlatform) -> None:
    """SIGKILL one replica: it leaves the list, comes back with the same name (a new process), and serves again;
    the app stays the same revision."""
    endpoint = platform.ensure_app(SPEC).state.endpoint
    old = replica_pids(platform)["chat--1-1"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: "chat--1-1" not in platform.list_replicas("chat") or replica_pids(platform)["chat--1-1"] != old)
    wait_for(lambda: platform.list_replicas("chat") == NAMES and replica_pids(platform)["chat--1-1"] != old)
    new = replica_pids(platform)["chat--1-1"]
    assert environ(new)["CONTAINER_APP_REPLICA_NAME"] == "chat--1-1"
    wait_for(lambda: json.loads((platform.settings.state_dir / "chat.replicas").read_text())
             ["replicas"]["chat--1-1"]["up"])
    seen = {requests.get(f"{endpoint}/whoami", timeout=5).json()["pid"] for _ in range(6)}
    assert new in seen and old not in seen
    assert platform.describe_app("chat").revision == "chat--1"
    assert "[revision runner] chat--1-1 exited with code -9" in (platform.settings.state_dir / "chat.log").read_text()


def test_sigterm_stops_every_replica_and_the_list_empties(platform: LocalPlatform) -> None:
    """SIGTERM to the runner: it stops all replicas and exits 0; list_replicas is then empty, the app not running."""
    platform.ensure_app(SPEC)
    pids = replica_pids(platform).values()
    runner = json.loads((platform.settings.state_dir / "chat.json").read_text())["pid"]
    os.kill(runner, signal.SIGTERM)
    wait_for(lambda: all(gone(pid) for pid in pids))
    wait_for(lambda: not platform.describe_app("chat").running)
    assert platform._children[runner].wait(5) == 0
    assert platform.list_replicas("chat") == []


def test_list_replicas_follows_liveness_and_stop_app(platform: LocalPlatform) -> None:
    """A new revision lists its replicas' new names; stop_app ends them all and the list empties."""
    platform.ensure_app(SPEC)
    assert platform.list_replicas("chat") == NAMES
    restarted = platform.restart_app("chat")
    assert restarted.revision == "chat--2" and platform.list_replicas("chat") == [n.replace("--1", "--2") for n in NAMES]
    pids = replica_pids(platform).values()
    platform.stop_app("chat", forget=False)
    assert all(gone(pid) for pid in pids) and platform.list_replicas("chat") == []


def test_no_replica_up_is_a_502(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """All replicas killed at once: the front answers 502 JSON while none is up, and serves again once they are
    restarted."""
    endpoint = platform.ensure_app(SPEC).state.endpoint
    for pid in replica_pids(platform).values():
        os.kill(pid, signal.SIGKILL)
    answer = requests.post(f"{endpoint}/v1/chat/completions", json={"model": "live", "messages": []}, timeout=5)
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "bad_gateway"
    wait_for(lambda: requests.get(f"{endpoint}/health", timeout=5).status_code == 200)


def test_a_replica_that_fails_at_start_fails_the_start(settings: LocalPlatformSettings) -> None:
    """A server that exits before answering /health ends the runner: ensure_app raises with the replica's output."""
    from activities.platform.base import PlatformError

    broken = LocalPlatform(replace(settings, server_command=(sys.executable, "-c", "raise SystemExit('no model')")))
    with pytest.raises(PlatformError, match=r"\[chat--1-0\] no model"):
        broken.ensure_app(SPEC)


def test_replica_count_precedence(settings: LocalPlatformSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """settings.replicas, else LOCAL_REPLICAS, else the spec's max_replicas (the template's); 1..8; a change
    restarts the app (it is in the spec hash)."""
    monkeypatch.delenv("LOCAL_REPLICAS", raising=False)
    unset = LocalPlatform(replace(settings, replicas=None))
    assert unset.replica_count(SPEC) == 1 and unset.replica_count(replace(SPEC, max_replicas=2)) == 2
    assert unset.replica_count(replace(SPEC, max_replicas=20)) == 8
    hashed = unset._spec_hash(SPEC)
    monkeypatch.setenv("LOCAL_REPLICAS", "4")
    assert unset.replica_count(SPEC) == 4 and unset._spec_hash(SPEC) != hashed
    assert LocalPlatform(settings).replica_count(SPEC) == 3
    assert Settings.from_env({"BASE_MODEL_NAME": "m", "LOCAL_REPLICAS": "4"}).local_replicas == 4
    assert Settings.from_env({"BASE_MODEL_NAME": "m"}).local_replicas is None
    for bad in ("0", "9", "two"):
        with pytest.raises(ConfigError, match="LOCAL_REPLICAS"):
            Settings.from_env({"BASE_MODEL_NAME": "m", "LOCAL_REPLICAS": bad})
    with pytest.raises(ValueError, match="replicas 9"):
        replace(settings, replicas=9)


def test_the_fault_hook_reaches_the_replicas_only_when_set(
    platform: LocalPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault hooks in the orchestrator's environment are passed to every replica; unset, to none."""
    hooks = {"INFERENCE_FAULT_REFUSE_LOAD": "chat--*-1:beta", "INFERENCE_FAULT_FAIL_CHAT": "chat--*:alpha"}
    platform.ensure_app(SPEC)
    assert all(not set(hooks) & set(environ(pid)) for pid in replica_pids(platform).values())
    for name, rule in hooks.items():
        monkeypatch.setenv(name, rule)
    platform.restart_app("chat")
    for pid in replica_pids(platform).values():
        assert {name: environ(pid).get(name) for name in hooks} == hooks


@pytest.fixture
def open_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="container-replicas-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_container_runtime_runs_one_container_per_replica(
    settings: LocalPlatformSettings, tmp_path: Path, open_dir: Path
) -> None:
    """The container runtime with 3 replicas: three `docker run` clients, containers `<name>-<i>` on their own
    ports; a killed client's container is removed before its replica starts again; stop removes every container."""
    log = tmp_path / "docker" / "log.jsonl"
    log.parent.mkdir()
    client = log.parent / "docker"
    client.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_DOCKER} --log {log} "
                      f"--image lora-inference:cpu --standin {STANDIN} -- \"$@\"\n")
    client.chmod(0o755)
    (open_dir / "model").mkdir()
    p = LocalPlatform(replace(settings, runtime="container", docker=str(client), server_command=(),
                              store_root=open_dir / "store", model_path=open_dir / "model"))
    try:
        state = p.ensure_app(SPEC).state
        base = p.container_name("chat")
        runs = docker_calls(log, "run")
        assert sorted(r["name"] for r in runs) == [f"{base}-{i}" for i in range(3)]
        ports = {r["argv"][r["argv"].index("--port") + 1] for r in runs}
        assert len(ports) == 3 and (state.endpoint or "").rsplit(":", 1)[1] not in ports
        assert p.list_replicas("chat") == NAMES
        os.kill(replica_pids(p)["chat--1-2"], signal.SIGKILL)
        wait_for(lambda: len(docker_calls(log, "run")) == 4 and p.list_replicas("chat") == NAMES)
        assert docker_calls(log, "run")[-1]["name"] == f"{base}-2"
        p.stop_app("chat")
        assert not list((log.parent / "containers").iterdir())
    finally:
        p.stop_all()


def test_replicas_end_with_a_runner_killed_hard_and_heal_starts_a_new_revision(platform: LocalPlatform) -> None:
    """SIGKILL to the runner alone: its replicas get SIGTERM (parent-death signal) instead of holding their ports;
    heal_app starts the app again as the next revision with all its replicas."""
    platform.ensure_app(SPEC)
    pids = replica_pids(platform).values()
    os.kill(json.loads((platform.settings.state_dir / "chat.json").read_text())["pid"], signal.SIGKILL)
    wait_for(lambda: all(gone(pid) for pid in pids))
    assert platform.list_replicas("chat") == []
    assert platform.heal_app("chat")["action"] == "restarted"
    assert platform.list_replicas("chat") == [n.replace("--1", "--2") for n in NAMES]
