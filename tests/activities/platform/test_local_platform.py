"""LocalPlatform with the aiohttp stand-in as the server process: start, no-op, spec change, restart, recovery."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from activities.apps import local_spec
from activities.config import Settings
from activities.platform.aca import AppNotFoundError
from activities.platform.base import ADMIN_KEY_SECRET, AppSpec, PlatformError, generate_secrets
from activities.platform.local import LocalPlatform, LocalPlatformSettings

STANDIN = Path(__file__).resolve().parents[1] / "standin_server.py"
TEMPLATE_PARAMETERS = Path(__file__).resolve().parents[3] / "infra/provision/inference.parameters.json"
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


def test_one_replica_named_in_its_environment_listed_while_alive(platform: LocalPlatform) -> None:
    """Each revision's process is one replica, `<app>--<n>-0`, its name (its report id) and revision in its
    environment as ACA sets them; listed while the process lives, a new name after a restart, none once dead."""
    assert platform.list_replicas("chat") == []
    first = platform.ensure_app(SPEC)
    env = environ(health(first.state.endpoint or "")["pid"])
    assert (env["CONTAINER_APP_REPLICA_NAME"], env["CONTAINER_APP_REVISION"]) == ("chat--1-0", "chat--1")
    assert platform.list_replicas("chat") == ["chat--1-0"]
    restarted = platform.restart_app("chat")
    assert environ(health(restarted.endpoint or "")["pid"])["CONTAINER_APP_REPLICA_NAME"] == "chat--2-0"
    assert platform.list_replicas("chat") == ["chat--2-0"]
    os.kill(health(restarted.endpoint or "")["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while platform.list_replicas("chat") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert platform.list_replicas("chat") == []


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


def environ(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


ORCHESTRATOR_SECRETS = {
    "AdaptersStorage": "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=c2VjcmV0",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "ADAPTER_STORAGE_CONNECTION_STRING": "AccountKey=c2VjcmV0",
    "AZURE_CLIENT_SECRET": "client-secret",
    "INFERENCE_API_KEY": "orchestrator-chat-key",
    "INFERENCE_ADMIN_KEY": "orchestrator-admin-key",
}


def test_server_environment_is_an_allowlist_with_a_generated_admin_key(
    platform: LocalPlatform, settings: LocalPlatformSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sees its own settings (and PATH, HF offline...) but none of the orchestrator's secrets; its admin
    key is generated, not a chat key, kept in the 0600 state file across restarts and never in its command line."""
    for name, value in {**ORCHESTRATOR_SECRETS, "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    spec = replace(SPEC, generated_secrets=(ADMIN_KEY_SECRET,))
    pid = health(platform.ensure_app(spec).state.endpoint or "")["pid"]
    env = environ(pid)
    assert set(ORCHESTRATOR_SECRETS) & set(env) == {"INFERENCE_ADMIN_KEY"}  # the server's own, not ours
    assert not set(ORCHESTRATOR_SECRETS.values()) & set(env.values())
    assert not [k for k in env if k.startswith("AZURE")]
    assert env["PATH"] == os.environ["PATH"] and env["HF_HUB_OFFLINE"] == "1" and env["LC_ALL"] == "C.UTF-8"
    assert env["EXTRA"] == "1" and env["INFERENCE_API_KEYS"] == "k1,k2"
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith("inference_image")
    admin = env["INFERENCE_ADMIN_KEY"]
    assert len(admin) >= 32 and admin not in ("k1", "k2", "orchestrator-admin-key")
    assert admin not in Path(f"/proc/{pid}/cmdline").read_text()
    assert json.loads((settings.state_dir / "chat.json").read_text())["generated"] == {ADMIN_KEY_SECRET: admin}
    restarted = platform.restart_app("chat")
    assert environ(health(restarted.endpoint or "")["pid"])["INFERENCE_ADMIN_KEY"] == admin


def test_generated_secret_is_never_a_given_one() -> None:
    """A kept value that equals a chat key (any of a comma-separated list) is replaced; another one is kept."""
    spec = replace(SPEC, generated_secrets=(ADMIN_KEY_SECRET,))
    assert generate_secrets(spec, {ADMIN_KEY_SECRET: "kept-admin"}) == {ADMIN_KEY_SECRET: "kept-admin"}
    fresh = generate_secrets(spec, {ADMIN_KEY_SECRET: "k2"})[ADMIN_KEY_SECRET]
    assert fresh not in ("k1", "k2", "") and len(fresh) >= 32
    with pytest.raises(ValueError, match="both given and generated"):
        replace(SPEC, generated_secrets=("inference-api-keys",))


def test_local_spec_asks_for_an_admin_key() -> None:
    """The orchestrator's local apps get a generated admin key next to the chat key."""
    settings = Settings(base_model_name="tiny-llama", inference_api_key="chat")
    spec = local_spec(settings, "chat", {}, "inference-api-keys")
    assert spec.secrets == {"inference-api-keys": "chat"} and spec.generated_secrets == (ADMIN_KEY_SECRET,)


def parameters_file(folder: Path, count: int | None) -> Path:
    """A copy of the template's inference.parameters.json with `maximumInstanceCount` set to `count`."""
    data = json.loads(TEMPLATE_PARAMETERS.read_text())
    data["parameters"]["maximumInstanceCount"]["value"] = count
    path = folder / "inference.parameters.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("count", "spec_replicas", "local_setting", "replicas"), [
    (3, 3, None, 3),  # the template's count when LOCAL_REPLICAS is unset
    (3, 3, "2", 2),  # the setting wins
    (None, 1, None, 1),  # null in the template: one
    (20, 20, None, 8),  # the local platform's bound
])
def test_local_spec_takes_the_templates_replica_count(
    settings: LocalPlatformSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int | None, spec_replicas: int,
    local_setting: str | None, replicas: int
) -> None:
    """`local_spec`'s max_replicas is the template's maximumInstanceCount, so the local platform runs that many
    replicas unless LOCAL_REPLICAS says otherwise."""
    app_settings = Settings(base_model_name="tiny-llama", parameters_path=str(parameters_file(tmp_path, count)))
    spec = local_spec(app_settings, "chat", {}, "inference-api-keys")
    assert spec.max_replicas == spec_replicas
    if local_setting is None:
        monkeypatch.delenv("LOCAL_REPLICAS", raising=False)
    else:
        monkeypatch.setenv("LOCAL_REPLICAS", local_setting)
    assert LocalPlatform(settings).replica_count(spec) == replicas


def test_local_spec_without_a_template_runs_one_replica_and_reads_the_shipped_one(tmp_path: Path) -> None:
    absent = Settings(base_model_name="tiny-llama", parameters_path=str(tmp_path / "absent.json"))
    assert local_spec(absent, "chat", {}, "inference-api-keys").max_replicas == 1
    shipped = json.loads(TEMPLATE_PARAMETERS.read_text())
    expected = shipped["parameters"]["maximumInstanceCount"]["value"] or 1
    in_repo = Settings(base_model_name="tiny-llama", parameters_path=str(TEMPLATE_PARAMETERS))
    assert local_spec(in_repo, "chat", {}, "inference-api-keys").max_replicas == expected


# --- heal --------------------------------------------------------------------------------------------------------


def wait_dead(platform: LocalPlatform, app: str) -> None:
    deadline = time.monotonic() + 5
    while platform.describe_app(app).running and time.monotonic() < deadline:
        time.sleep(0.05)


def test_heal_restarts_a_killed_server(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """A SIGKILLed server is started again on the same port with the same store; a healthy one is left alone."""
    first = platform.ensure_app(SPEC).state
    pid = health(first.endpoint or "")["pid"]
    assert platform.heal_app("chat") == {"action": "none"}
    os.kill(pid, signal.SIGKILL)
    wait_dead(platform, "chat")
    assert platform.heal_app("chat") == {"action": "restarted", "reason": "process exited with code -9 (SIGKILL)"}
    state = platform.describe_app("chat")
    assert state.running and state.revision == "chat--2" and state.endpoint == first.endpoint
    info = health(state.endpoint or "")
    assert info["pid"] != pid and info["api_keys"] == "k1,k2"
    assert info["argv"][info["argv"].index("--adapter-store") + 1] == str(settings.store_root / "chat")
    assert platform.heal_app("chat") == {"action": "none"}


def test_heal_after_a_host_restart(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """A new host (no exit status of the old process) still restarts a server that died."""
    pid = health(platform.ensure_app(SPEC).state.endpoint or "")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_dead(platform, "chat")
    healed = LocalPlatform(settings).heal_app("chat")
    assert healed == {"action": "restarted", "reason": f"process {pid} has exited"}
    assert platform.describe_app("chat").running


def test_heal_restarts_a_hung_server(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """A server that is alive but does not answer /health (stopped) is replaced."""
    quick = LocalPlatform(replace(settings, health_timeout=0.3, stop_timeout=0.5))
    pid = health(quick.ensure_app(SPEC).state.endpoint or "")["pid"]
    os.kill(pid, signal.SIGSTOP)
    assert quick.heal_app("chat") == {"action": "restarted", "reason": f"process {pid} does not answer /health"}
    assert health(quick.describe_app("chat").endpoint or "")["pid"] != pid
    quick.stop_all()


def test_heal_leaves_an_app_never_started_alone(platform: LocalPlatform) -> None:
    """No state, no action: heal never starts an app the orchestrator did not start (or stopped)."""
    assert platform.heal_app("chat") == {"action": "none"}
    platform.ensure_app(SPEC)
    platform.stop_app("chat")
    assert platform.heal_app("chat") == {"action": "none"}
    assert not platform.describe_app("chat").exists


def test_delete_stops_and_forgets_the_app(platform: LocalPlatform, settings: LocalPlatformSettings) -> None:
    """delete_app stops the server and drops its state file; a second delete finds nothing."""
    endpoint = platform.ensure_app(SPEC).state.endpoint or ""
    assert platform.delete_app("chat") is True
    assert not (settings.state_dir / "chat.json").exists() and not platform.describe_app("chat").exists
    with pytest.raises(requests.ConnectionError):
        health(endpoint)
    assert platform.delete_app("chat") is False


# --- container runtime (the docker client: tests/activities/platform/fake_docker.py here, the real one in
# tests/image/test_container_runtime.py) ----------------------------------------------------------------------------

FAKE_DOCKER = Path(__file__).resolve().parent / "fake_docker.py"


@pytest.fixture
def docker_log(tmp_path: Path) -> Path:
    return tmp_path / "docker" / "log.jsonl"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder other users can enter (pytest's tmp_path is 0700): the container's user reads the store from it."""
    folder = Path(tempfile.mkdtemp(prefix="container-runtime-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def in_container(settings: LocalPlatformSettings, docker_log: Path, open_dir: Path) -> Iterator[LocalPlatform]:
    """A platform with the container runtime whose docker client is the fake (image `lora-inference:cpu` only)."""
    docker_log.parent.mkdir()
    client = docker_log.parent / "docker"
    client.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_DOCKER} --log {docker_log} "
                      f"--image lora-inference:cpu --standin {STANDIN} -- \"$@\"\n")
    client.chmod(0o755)
    (open_dir / "model").mkdir()
    p = LocalPlatform(replace(settings, runtime="container", docker=str(client), server_command=(),
                              store_root=open_dir / "store", model_path=open_dir / "model"))
    yield p
    p.stop_all()


def docker_calls(log: Path, cmd: str) -> list[dict]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["cmd"] == cmd]


def test_container_runtime_runs_the_image_as_aca_does(
    in_container: LocalPlatform, docker_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker run --rm --network host` of the image: the store and model mounted read-only at the image's paths
    (the replica reports' folder writable), the chat page off, secrets passed by name (never in the command line)."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "orchestrator-secret")
    spec = replace(SPEC, generated_secrets=(ADMIN_KEY_SECRET,))
    state = in_container.ensure_app(spec).state
    assert state.running and state.image == "lora-inference:cpu"
    info = health(state.endpoint or "")
    argv = info["argv"]
    assert argv[argv.index("--adapter-store") + 1] == "/adapters"
    assert argv[argv.index("--model-path") + 1] == "/models/base"
    assert info["api_keys"] == "k1,k2"
    name = in_container.container_name("chat")
    assert docker_calls(docker_log, "rm")[0]["name"] == name  # a leftover is removed before the start
    run = docker_calls(docker_log, "run")[-1]
    assert run["name"] == name and run["network"] == ["host"] and run["rm"]
    settings = in_container.settings
    assert settings.model_path is not None
    store = settings.store_root.resolve() / "chat"
    assert sorted(run["mounts"]) == sorted([f"{store}:/adapters:ro", f"{store / '_replicas'}:/adapters/_replicas",
                                            f"{settings.model_path.resolve()}:/models/base:ro"])
    assert (store / "_replicas").stat().st_mode & 0o7777 == 0o1777  # the image's user writes its report there
    assert set(run["env_names"]) == {"CHAT_PAGE_ENABLED", "EXTRA", "INFERENCE_API_KEYS", "INFERENCE_ADMIN_KEY",
                                     "CONTAINER_APP_REPLICA_NAME", "CONTAINER_APP_REVISION", "INFERENCE_PORT",
                                     "INFERENCE_HOST"}
    env = environ(info["pid"])  # what the "container" got: the named variables only
    assert env["CHAT_PAGE_ENABLED"] == "0" and env["EXTRA"] == "1" and "AZURE_STORAGE_CONNECTION_STRING" not in env
    # the image's HEALTHCHECK curls INFERENCE_PORT: the port the server was given, not the image's 8000
    assert env["INFERENCE_PORT"] == argv[argv.index("--port") + 1] == (state.endpoint or "").rsplit(":", 1)[1]
    assert env["CONTAINER_APP_REPLICA_NAME"] == "chat--1-0" and in_container.list_replicas("chat") == ["chat--1-0"]
    admin = env["INFERENCE_ADMIN_KEY"]
    client_argv = " ".join(json.loads((settings.state_dir / "chat.json").read_text())["command"])
    assert "k1,k2" not in client_argv and admin not in client_argv


def test_container_runtime_stop_and_heal_leave_no_container(
    in_container: LocalPlatform, docker_log: Path
) -> None:
    """A stop removes the container; a client killed hard is replaced by heal after its container is removed."""
    first = in_container.ensure_app(SPEC).state
    client_pid = json.loads((in_container.settings.state_dir / "chat.json").read_text())["pid"]
    os.kill(client_pid, signal.SIGKILL)
    wait_dead(in_container, "chat")
    assert in_container.heal_app("chat")["action"] == "restarted"
    assert in_container.describe_app("chat").revision == "chat--2"
    assert len(docker_calls(docker_log, "run")) == 2 and health(first.endpoint or "")["pid"]
    removed = len(docker_calls(docker_log, "rm"))
    in_container.stop_app("chat")
    assert len(docker_calls(docker_log, "rm")) == removed + 1
    assert not in_container.describe_app("chat").exists
    in_container.ensure_app(SPEC)
    state_dir = in_container.settings.state_dir
    assert in_container.delete_app("chat") and not list(state_dir.glob("*chat*")), list(state_dir.iterdir())


def test_container_runtime_without_the_image_says_how_to_build_it(
    in_container: LocalPlatform, docker_log: Path
) -> None:
    """An image the engine does not have is a PlatformError naming `make image`; nothing is run."""
    other = LocalPlatform(replace(in_container.settings, image="lora-inference:missing"))
    with pytest.raises(PlatformError, match="make image"):
        other.ensure_app(SPEC)
    assert not docker_calls(docker_log, "run")


def test_container_runtime_refuses_a_store_its_user_cannot_read(in_container: LocalPlatform, docker_log: Path) -> None:
    """A 0700 store folder, or a model file only its owner reads: the image's non-root user could not read them, so
    nothing starts, and the error names what to open."""
    store = in_container.settings.store_root / SPEC.app
    store.mkdir(parents=True)
    store.chmod(0o700)
    with pytest.raises(PlatformError, match=rf"chmod o\+rX {store}`"):
        in_container.ensure_app(SPEC)
    store.chmod(0o755)
    model = in_container.settings.model_path
    assert model is not None
    (model / "model.safetensors").write_bytes(b"{}")
    (model / "model.safetensors").chmod(0o600)  # as save_pretrained may leave it
    with pytest.raises(PlatformError, match="model.safetensors is closed to other users"):
        in_container.ensure_app(SPEC)
    assert not docker_calls(docker_log, "run")


def test_runtime_setting_is_checked(settings: LocalPlatformSettings) -> None:
    with pytest.raises(ValueError, match="runtime 'vm'"):
        replace(settings, runtime="vm")
    with pytest.raises(ValueError, match="image"):
        replace(settings, runtime="container", image="")
