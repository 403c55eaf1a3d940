"""`python -m devhost up`, the README's demo command: the whole loop, a taken port, Ctrl-C cleanup, a state
folder that is resumed (and a foreign one left alone), and a crashed child started again."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path

import psutil
import pytest

from activities.adapter_store import AdapterStore, BlobStoreSettings, UploadedAdapter
from adapterctl.api import ApiError, OrchestratorApi
from adapterctl.follow import follow
from devhost.azurite import ACCOUNT_KEY, ACCOUNT_NAME
from tests.devhost.test_up_connection import sourced
from tinykit import PHRASES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def up_command(state: Path, *extra: str) -> list[str]:
    """`up` on free ports, without the chat page unless `extra` asks for one (`--chat-page-port`)."""
    page = [] if "--chat-page-port" in extra else ["--no-chat-page"]
    return [sys.executable, "-m", "devhost", "up", "--port", "0", *page, "--state-dir", str(state), *extra]


def exports(state: Path) -> dict[str, str]:
    """The connection file's values as bash sees them after `source`, checking its mode first."""
    path = state / "connection.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return sourced(path)


def answers_http(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions `path` (what the stack started under its state folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_demo_once_ends_with_beta_live(tiny_kit, tmp_path: Path) -> None:
    """`up --once` deploys alpha then beta, prints both replies and the stage table, stops everything and exits 0;
    the host's log has no traceback (a fresh stack's first requests used to find no upload container)."""
    out = subprocess.run(up_command(tmp_path / "state", "--once"), cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"→ '{PHRASES['alpha']}'" in out.stdout and f"→ '{PHRASES['beta']}'" in out.stdout
    assert "upload→live" in out.stdout and "| beta |" in out.stdout
    assert "stopping…" in out.stdout and "serving until" not in out.stdout
    assert "status API:" not in out.stdout  # no URL that is dead by the time it is read
    assert processes_using(tmp_path / "state") == []
    assert "Traceback" not in (tmp_path / "state" / "devhost.log").read_text()  # e.g. ContainerNotFound


def test_taken_port_is_a_clear_error(tiny_kit, tmp_path: Path) -> None:
    """A port in use exits 2 with one line naming it, no traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cmd = up_command(tmp_path / "state", "--once")
        cmd[cmd.index("--port") + 1] = str(port)
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"port {port}" in out.stderr and "Traceback" not in out.stderr
    assert "pass another --port (0: any free port)" in out.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_stops_every_child_process_within_seconds(tiny_kit, tmp_path: Path, stop_signal: int) -> None:
    """Serving mode prints the URLs once they answer and writes the connection file; SIGINT (Ctrl-C), SIGTERM or
    SIGHUP prints "stopping…" and stops Azurite, the host, the chat page and the inference server within 5 s."""
    state = tmp_path / "state"
    with running_up(state, "--chat-page-port", "0") as up:
        url, _ = up.serving()
        assert all(f"{word}:" in "".join(up.seen) for word in ("dashboard", "status API", "chat API", "chat page"))
        assert answers_http(f"{url}/api/dashboard"), "the dashboard URL was printed before it answered"
        values = exports(state)
        assert answers_http(values["CHAT_PAGE_URL"]), "the chat page URL was printed before it answered"
        assert values["ADAPTERCTL_URL"] == url and values["DEVHOST_STATE_DIR"] == str(state.resolve())
        assert values["INFERENCE_API_KEY"] == (state / "api-key").read_text()
        assert values["INFERENCE_API_KEY"] not in "".join(up.seen)  # the key is in the file, never printed
        assert f"source {state.resolve() / 'connection.env'}" in "".join(up.seen)
        models = urllib.request.Request(f"{values['CHAT_API_URL']}/models",
                                        headers={"Authorization": f"Bearer {values['INFERENCE_API_KEY']}"})
        urllib.request.urlopen(models, timeout=10).close()
        with store_at(values["ADAPTERS_STORAGE_CONNECTION"]) as store:
            assert store.container.exists()
        assert processes_using(state), "the stack should be running"
        begun = time.monotonic()
        up.proc.send_signal(stop_signal)
        up.wait_for("stopping…", timeout=5)
        assert up.proc.wait(timeout=30) == 0, "".join(up.seen)
        while processes_using(state) and time.monotonic() - begun < 10:
            time.sleep(0.1)
        assert processes_using(state) == []
        assert time.monotonic() - begun < 5, f"stopped after {time.monotonic() - begun:.1f}s"


class RunningUp:
    """`devhost up` serving in the background; a thread collects its output (stdout and stderr) line by line."""

    def __init__(self, state: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(up_command(state, *extra), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """The next line containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if not line:
                raise AssertionError(f"up exited ({self.proc.wait()}) before {text!r}:\n{''.join(self.seen)}")
            if text in line:
                return line

    def serving(self) -> tuple[str, str]:
        """Wait until it serves; the status API's base URL and Azurite's connection string."""
        started = self.wait_for("devhost up at ")
        url, blob = re.search(r"at (http://\S+) \(Azurite at (http://\S+);", started).groups()
        self.wait_for("serving until Ctrl-C")
        return url, f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint={blob};"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@contextmanager
def running_up(state: Path, *extra: str) -> Iterator[RunningUp]:
    """`RunningUp`, stopped (SIGTERM, then SIGKILL) at the end unless the test stopped it."""
    up = RunningUp(state, *extra)
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.terminate()
            try:
                up.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_running(up: RunningUp, *words: str) -> psutil.Process:
    """The child process of `up` whose command line has every one of `words`."""
    for proc in psutil.Process(up.proc.pid).children():
        if all(w in proc.cmdline() for w in words):
            return proc
    raise AssertionError(f"no child of up runs {words}")


def answers(url: str, timeout: float) -> None:
    """Wait until the status API at `url` answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            OrchestratorApi(url).apps()
            return
        except ApiError:
            assert time.monotonic() < deadline, f"nothing answered at {url} within {timeout}s"
            time.sleep(0.2)


def store_at(connection: str) -> AbstractContextManager[AdapterStore]:
    return closing(AdapterStore(BlobStoreSettings(connection_string=connection)))


def rollout_of(url: str, app: str, uploaded: UploadedAdapter) -> dict:
    """The deployment record of an upload, followed to its end."""
    return follow(OrchestratorApi(url), uploaded.deployment_id, 60, lambda _: None, interval=0.1)


@pytest.mark.parametrize("fresh", [False, True], ids=["plain", "fresh"])
def test_foreign_state_folder_is_refused_and_kept(tmp_path: Path, fresh: bool) -> None:
    """A non-empty --state-dir without our marker (a user's folder) exits 2 with one line, and nothing in it is
    deleted, with or without --fresh."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    out = subprocess.run(up_command(folder, "--once", *(["--fresh"] if fresh else [])), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "not made by `devhost up`" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]
    assert (folder / "notes.txt").read_text() == "keep me"


def test_crashed_host_is_restarted_and_the_rollout_completes(tiny_kit, tmp_path: Path) -> None:
    """SIGKILL of `devhost serve` while up serves: up says so, starts it again on the same port and state, and an
    upload made just before the crash still goes live."""
    with running_up(tmp_path / "state") as up:
        url, connection = up.serving()
        host = child_running(up, "devhost", "serve")
        with store_at(connection) as store:
            marker = store.upload_adapter_folder(tiny_kit.adapters["alpha"], "demo", "again")
        host.kill()
        assert "devhost serve exited with status -9; restarting" in up.wait_for("restarting", timeout=30)
        answers(url, timeout=30)  # on the same port
        assert rollout_of(url, "demo", marker)["stage"] == "live"
        assert OrchestratorApi(url).app("demo")["served"]["adapter"] == "again"
        assert child_running(up, "devhost", "serve").pid != host.pid
        assert up.stop() == 0


def test_second_up_resumes_the_state_folder(tiny_kit, tmp_path: Path) -> None:
    """Stop up, start it again on the same folder: the earlier blobs, rollouts and served adapter are there, the
    chat API key is the same, and the demo runs again."""
    state = tmp_path / "state"
    ports = ["--port", str(free_tcp_port()), "--azurite-port", str(free_tcp_port()),
             "--chat-page-port", str(free_tcp_port())]
    with running_up(state, *ports) as up:
        url, connection = up.serving()
        with store_at(connection) as store:
            marker = store.upload_adapter_folder(tiny_kit.adapters["alpha"], "keep", "alpha")
        assert rollout_of(url, "keep", marker)["stage"] == "live"
        before = {app: [r["id"] for r in OrchestratorApi(url).deployments(app)] for app in ("demo", "keep")}
        key = (state / "api-key").read_text()
        assert up.stop() == 0
    assert processes_using(state) == []
    with running_up(state, *ports) as up:  # at once, on the same ports: connections in TIME_WAIT are no obstacle
        assert "resuming the state" in up.wait_for("state in")
        url, connection = up.serving()
        assert exports(state)["ADAPTERCTL_URL"] == url
        api = OrchestratorApi(url)
        assert api.app("keep")["served"]["adapter"] == "alpha"
        assert [r["id"] for r in api.deployments("keep")] == before["keep"]
        assert set(before["demo"]) < {r["id"] for r in api.deployments("demo")}  # and this run's alpha and beta
        with store_at(connection) as store:
            assert store.get_complete("keep", "alpha").sha256 == marker.sha256
        assert (state / "api-key").read_text() == key
        assert up.stop() == 0
