"""The built CPU image, run as ACA runs it (skipped unless INFERENCE_IMAGE names a local image: `make image`, then
`tests/image/run_image_smoke.sh`).

One container, as the provisioning code configures it: the image's own non-root user, the base model and the adapter
store mounted as volumes (both read-only: the server only reads them), API keys as environment secrets, the declared
port, the image's HEALTHCHECK (run every 2 s here instead of 30 s), the chat page beside the server as `start.sh`
runs it. `--network host`, since this machine's dockerd runs without a bridge; where the declared port (or the chat
page's) is taken on this machine, a free one is set through INFERENCE_PORT (CHAT_PAGE_PORT) and the test says so.
Checks: /health, /ready once the manifest's adapter is loaded, a streamed chat through the official `openai` client
with the adapter's phrase, a manifest switch picked up live, 401 without a key, every process in the container
running as a non-root user, and SIGTERM ending the container within the drain timeout with no broken stream.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

import pytest
from openai import OpenAI

from activities.platform.aca import PROBE_PATHS, AcaSettings
from inference_server.manifest import AdapterEntry, Manifest, adapter_digest, write_manifest
from tests.image.engine import IMAGE, docker, needs_image
from tinykit import PHRASES, KitPaths

API_KEY = "smoke-key-" + uuid.uuid4().hex[:8]
DRAIN_TIMEOUT_S = 10.0
MESSAGES = [{"role": "user", "content": "hi there"}]
_docker = docker
pytestmark = needs_image


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _readable(path: Path) -> None:
    """World-readable (dirs traversable): the container's user is not the owner of the host's files."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


def _publish(store: Path, active: str) -> Manifest:
    """The manifest for the adapters copied into the store (version `<name>-1`), `active` routed by the alias."""
    entries = {name: AdapterEntry(name, adapter_digest(store / name), f"{name}-1") for name in PHRASES}
    manifest = Manifest(adapters=entries, active=active, base_model="base")
    write_manifest(store, manifest)
    _readable(store)
    return manifest


@dataclass
class Container:
    name: str
    url: str
    store: Path
    chat_page_port: int
    base_model: str

    def get(self, path: str, key: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            body = err.read()
            return err.code, json.loads(body) if body.startswith(b"{") else {}

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

    def running(self) -> bool:
        out = _docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return out.stdout.strip() == "true"


def _image_port(name: str, default: int) -> int:
    env = json.loads(_docker("image", "inspect", "-f", "{{json .Config.Env}}", IMAGE).stdout)
    values = dict(item.split("=", 1) for item in env)
    return int(values.get(name, default))


@pytest.fixture(scope="module")
def container(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root = tmp_path_factory.mktemp("image")
    model, store = root / "model", root / "store"
    shutil.copytree(tiny_kit.base, model)
    for name in PHRASES:
        shutil.copytree(tiny_kit.adapters[name], store / name)
    _readable(model)
    _publish(store, "alpha")

    port = _image_port("INFERENCE_PORT", 8000)
    aca_port = {f.name: f for f in dataclass_fields(AcaSettings)}["target_port"].default
    assert port == aca_port, "the image must listen where provisioning sends ACA's ingress and probes"
    assert str(port) + "/tcp" in json.loads(_docker("image", "inspect", "-f", "{{json .Config.ExposedPorts}}",
                                                    IMAGE).stdout)
    page_port = _image_port("CHAT_PAGE_PORT", 7860)
    env = {"INFERENCE_API_KEYS": API_KEY, "INFERENCE_BASE_MODEL_NAME": tiny_kit.base_model_name,
           "INFERENCE_SYNC_INTERVAL_S": "1", "INFERENCE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)}
    if not _port_free(port):
        print(f"port {port} is taken on this machine: the container listens on another (INFERENCE_PORT)")
        port = _free_port()
        env["INFERENCE_PORT"] = str(port)
    if not _port_free(page_port):
        page_port = _free_port()
        env["CHAT_PAGE_PORT"] = str(page_port)
    name = "lora-smoke-" + uuid.uuid4().hex[:8]
    args = ["run", "-d", "--name", name, "--network", "host",
            "-v", f"{model}:/models/base:ro", "-v", f"{store}:/adapters:ro",
            "--health-interval", "2s", "--health-start-period", "60s", "--health-timeout", "5s"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    _docker(*args, IMAGE)
    box = Container(name, f"http://127.0.0.1:{port}", store, page_port, tiny_kit.base_model_name)
    try:
        yield box
    finally:
        logs = _docker("logs", name, check=False)
        print("--- container stdout ---\n" + logs.stdout[-4000:] + "\n--- container stderr ---\n" + logs.stderr[-8000:])
        _docker("rm", "-f", "-v", name, check=False)


def _wait(check, what: str, timeout: float = 180) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_health_then_ready_with_the_manifest_adapter(container: Container) -> None:
    """The probes provisioning gives the container app (no key): startup and liveness answer while the container
    runs, readiness once alpha is loaded; with the key /ready names the version."""
    _wait(lambda: container.running() and container.get(PROBE_PATHS["Startup"])[0] == 200, "the startup probe")
    assert container.get(PROBE_PATHS["Liveness"])[0] == 200
    _wait(lambda: container.get(PROBE_PATHS["Readiness"])[0] == 200, "the readiness probe")
    status, body = container.get("/ready", API_KEY)
    assert status == 200 and body.get("ready") is True, body
    assert "alpha-1" in json.dumps(body), body


def test_healthcheck_passes(container: Container) -> None:
    """The image's own HEALTHCHECK command (curl on /health at INFERENCE_PORT) turns the container healthy."""
    def healthy() -> bool:
        out = _docker("inspect", "-f", "{{.State.Health.Status}}", container.name).stdout.strip()
        assert out != "unhealthy", _docker("inspect", "-f", "{{json .State.Health}}", container.name).stdout
        return out == "healthy"
    _wait(healthy, "the HEALTHCHECK", timeout=60)


def test_streamed_chat_answers_with_the_adapter(container: Container) -> None:
    """A streamed chat on the alias through the official openai client answers with alpha's phrase."""
    stream = container.client().chat.completions.create(
        model="live", messages=MESSAGES, temperature=0, max_tokens=16, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert PHRASES["alpha"] in text, text


def test_no_key_is_401(container: Container) -> None:
    """Every route but /health and /ready needs the key."""
    request = urllib.request.Request(container.url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({"model": "live", "messages": MESSAGES}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 401
    assert container.get("/v1/models")[0] == 401
    assert container.get("/v1/models", "wrong-key")[0] == 401


def test_chat_page_runs_beside_the_server(container: Container) -> None:
    """start.sh runs the Gradio chat page next to the server, on CHAT_PAGE_PORT."""
    def page() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{container.chat_page_port}/", timeout=5) as resp:
            return resp.status == 200
    _wait(page, "the chat page", timeout=90)


def test_processes_run_as_non_root(container: Container) -> None:
    """Every process in the container (start.sh, the server, the chat page) runs as the image's user, not root."""
    script = ("import os\nfor p in os.listdir('/proc'):\n if p.isdigit():\n  try:\n"
              "   s=open(f'/proc/{p}/status').read(); c=open(f'/proc/{p}/cmdline','rb').read()\n"
              "  except OSError:\n   continue\n"
              "  uid=[ln.split()[1] for ln in s.splitlines() if ln.startswith('Uid:')][0]\n"
              "  print(uid, ' '.join(c.replace(b'\\0', b' ').decode(errors='replace').split())[:80])\n")
    top = _docker("top", container.name, "-eo", "pid,uid,args").stdout  # seen from the host
    inside = _docker("exec", container.name, "python", "-c", script).stdout
    uids = {line.split()[0] for line in inside.splitlines() if line.strip()}
    assert uids == {"10001"}, inside
    assert "inference_server" in inside and "chat_page" in inside, inside
    assert {line.split()[1] for line in top.splitlines()[1:]} == {"10001"}, top
    assert _docker("exec", container.name, "id", "-u").stdout.strip() == "10001"


def test_manifest_switch_is_picked_up_live(container: Container) -> None:
    """A new manifest in the (read-only mounted) store makes the alias answer with beta, without a restart."""
    _publish(container.store, "beta")

    def switched() -> bool:
        reply = container.client().chat.completions.create(model="live", messages=MESSAGES, temperature=0,
                                                           max_tokens=16)
        return PHRASES["beta"] in (reply.choices[0].message.content or "")
    _wait(switched, "the alias to serve beta", timeout=60)


def test_sigterm_drains_and_ends_the_container(container: Container) -> None:
    """SIGTERM during a stream: the stream ends whole, and the container exits 0 within the drain timeout.

    The stream is on the base model (the adapters stop after their phrase), long enough to be running at SIGTERM."""
    stream = container.client().chat.completions.create(
        model=container.base_model, messages=MESSAGES, temperature=0, max_tokens=400, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    started = time.monotonic()
    _docker("kill", "--signal", "TERM", container.name)
    rest = list(chunks)
    finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
    assert finish, "the stream ended without a finish_reason"
    code = _docker("wait", container.name, timeout=DRAIN_TIMEOUT_S + 30).stdout.strip()
    took = time.monotonic() - started
    assert code == "0", code
    assert took < DRAIN_TIMEOUT_S + 5, f"the container took {took:.1f} s to stop"
    assert len(rest) > 1, "the stream had ended before SIGTERM: nothing was drained"
    print(f"SIGTERM with a stream running: {len(rest)} chunks after it, finish_reason {finish[-1]}; "
          f"container exited 0 in {took:.1f} s (drain timeout {DRAIN_TIMEOUT_S:.0f} s)")
