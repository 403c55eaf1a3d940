"""`python -m devhost up`: the whole product loop on one machine, with no cloud.

Builds the tiny model kit if missing, starts Azurite and the local Durable host running `function_app:app`
(as a child process, with the local platform: the inference server runs as a process too), uploads adapter
`alpha`, waits until it is live, chats, then does the same with `beta`, and prints a table of stage timings.
Then it keeps serving with the URLs printed until Ctrl-C, SIGTERM or SIGHUP (`--once`: exit after the table),
starting again a child that exits (`devhost.supervisor`), and stops every child process it started.

Everything lives in the state folder (Azurite's blobs, the Durable history, the adapter store, logs, the chat API
key), marked as ours by a `.devhost-state` file: a later `up` on it resumes (orchestrations continue where they
were); `--fresh` starts over. A non-empty folder without the mark is neither used nor deleted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from devhost.cli import Subcommand, register
from devhost.supervisor import Supervisor, Watched

ROOT = Path(__file__).resolve().parent.parent
DEMO_MESSAGE = "Hello! Who are you?"
STATE_MARKER = ".devhost-state"


class StateDirError(OSError):
    """The state folder cannot be used: not ours and not empty, or in use by another `up`."""


@dataclass
class RolloutTiming:
    adapter: str
    upload_to_live_s: float
    stages: dict[str, float]  # stage -> seconds after the upload
    outcome: str
    reply: str


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-name", default="demo", help="the inference app to deploy to (default %(default)s)")
    parser.add_argument("--port", type=int, default=7071, help="devhost (status API) port; 0 picks a free one")
    parser.add_argument("--azurite-port", type=int, default=0, help="Azurite blob port (default: a free one)")
    parser.add_argument("--inference-port", type=int, default=0, help="chat API port (default: a free one)")
    parser.add_argument("--chat-page-port", type=int, default=7860, help="Gradio chat page port (0: none)")
    parser.add_argument("--state-dir", default=".devhost/up",
                        help="state folder, resumed when an earlier `up` made it (default %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: delete the state folder first (only one made by `up`)")
    parser.add_argument("--kit-dir", default="build/tinykit/llama", help="tiny model kit folder")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each rollout")
    parser.add_argument("--once", action="store_true", help="exit after the timing table")


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, expect_ok: bool = False) -> None:
    """Wait until `url` answers (with `expect_ok`: answers 200)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before answering at {url}")
        try:
            if requests.get(url, timeout=2).ok or not expect_ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered{' 200' if expect_ok else ''} at {url} within {timeout:.0f}s")


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A child process in its own session (so Ctrl-C reaches only us), its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def child(name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[Watched]:
    """A child process stopped on exit, as a `Watched` that starts it again with the same command."""
    procs = [_spawn(cmd, env, log_path)]
    try:
        yield Watched(name, lambda: procs[-1].poll(), lambda: procs.append(_spawn(cmd, env, log_path)))
    finally:
        _stop(procs[-1])


@contextmanager
def claim_state(state_dir: Path, fresh: bool = False) -> Iterator[bool]:
    """Hold `state_dir` for one stack (a lock on its marker file); yields True when earlier state is resumed.

    A folder with our marker is resumed, or emptied first with `fresh`; a missing or empty one is made ours;
    anything else raises `StateDirError` and is left untouched."""
    marker = state_dir / STATE_MARKER
    if not marker.is_file() and state_dir.exists() and (not state_dir.is_dir() or any(state_dir.iterdir())):
        raise StateDirError(f"state folder {state_dir} is not empty and was not made by `devhost up` (no "
                            f"{STATE_MARKER}): not using or deleting it; pass a new or empty --state-dir")
    resumed = marker.is_file()
    if resumed and fresh:
        with _locked(marker):
            shutil.rmtree(state_dir)
        resumed = False
    state_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        marker.write_text("state of `python -m devhost up`, resumed by the next `up`; `up --fresh` deletes it\n")
    with _locked(marker):
        yield resumed


@contextmanager
def _locked(marker: Path) -> Iterator[None]:
    with open(marker) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirError(f"state folder {marker.parent} is in use by another `devhost up`") from None
        yield


def _free_port(port: int) -> int:
    """`port` if it is free (0: any free port); `PortInUseError` naming it otherwise."""
    import socket

    from devhost.host import PortInUseError

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUseError(f"port {port} on 127.0.0.1 is already in use; pass another --port (0: any)") from exc
        return sock.getsockname()[1]


def _seconds(since: float, stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp() - since


def deploy_and_chat(api, store, app: str, name: str, folder: Path, key: str, timeout: float) -> RolloutTiming:
    """Upload one adapter, follow its rollout to the end, and chat with the live alias."""
    from adapterctl.api import stream_chat
    from adapterctl.follow import follow

    started = time.time()
    uploaded = store.upload_adapter_folder(folder, app, name)
    print(f"\n→ uploaded {name} ({uploaded.sha256[:12]}) to {app}; deployment {uploaded.deployment_id}:", flush=True)
    record = follow(api, uploaded.deployment_id, timeout, lambda e: _print_stage(started, e), interval=0.1)
    live_s = time.time() - started
    stages = {e["stage"]: _seconds(started, e["at"]) for e in record.get("history", [])}
    if record.get("stage") != "live":
        raise RuntimeError(f"rollout of {name} ended {record.get('stage')}: {record.get('reason')}")
    if record.get("already_live"):  # on a resumed state the server may still be coming back (heal)
        print(f"   {name} was live already", flush=True)
    endpoint = api.app(app)["endpoint"]
    _wait_http(f"{endpoint}/ready", timeout, expect_ok=True)
    reply = "".join(stream_chat(endpoint, key, "live", DEMO_MESSAGE, temperature=0, max_tokens=32))
    print(f"   chat ({name} live): {DEMO_MESSAGE!r} → {reply!r}", flush=True)
    return RolloutTiming(name, live_s, stages, record["stage"], reply)


def _print_stage(started: float, entry: dict[str, Any]) -> None:
    """One stage line; `received` is the marker's time on the storage service's clock (whole seconds)."""
    if entry["stage"] == "received":
        print(f"   {'received':<13} (marker stored at {entry['at'][11:19]} UTC)", flush=True)
    else:
        print(f"   {entry['stage']:<13} +{_seconds(started, entry['at']):6.2f}s", flush=True)


def print_table(rows: list[RolloutTiming]) -> None:
    stages = ["validating", "staging", "provisioning", "activating", "verifying", "live"]
    print("\nStage reached, seconds after upload:")
    print(f"| adapter | {' | '.join(stages)} | upload→live |")
    print("|---" * (len(stages) + 2) + "|")
    for r in rows:
        cells = [f"{r.stages[s]:.2f}" if s in r.stages else "-" for s in stages]
        print(f"| {r.adapter} | {' | '.join(cells)} | {r.upload_to_live_s:.2f} |")


@dataclass
class LocalStack:
    """Everything `up` started: the status API client, the upload store, the kit and the chat API key."""

    url: str
    api: Any
    store: Any
    kit: Any
    api_key: str
    state: Path
    env: dict[str, str]
    host: subprocess.Popen
    host_cmd: list[str]
    azurite: Any = None
    resumed: bool = False

    def process_ids(self) -> list[int]:
        """Every process of the stack: Azurite, the host and what it started (inference servers included)."""
        import psutil

        pids = [*self.azurite.pids, self.host.pid]
        pids += [c.pid for c in psutil.Process(self.host.pid).children(recursive=True)]
        for state_file in (self.state / "platform").glob("*.json"):
            pid = json.loads(state_file.read_text()).get("pid")
            if pid and psutil.pid_exists(pid):
                pids.append(pid)
        return sorted(set(pids))

    def kill_host(self) -> None:
        """SIGKILL the host (what a crash looks like); the inference servers it started keep running."""
        self.host.kill()
        self.host.wait()

    def start_host(self) -> None:
        """Start the host again on the same state folder: it resumes every unfinished orchestration."""
        self.host = _spawn(self.host_cmd, self.env, self.state / "devhost.log")
        _wait_http(f"{self.url}/api/apps", 60, self.host)


@contextmanager
def local_stack(state_dir: Path, kit_dir: Path, port: int = 0, azurite_port: int = 0,
                inference_port: int = 0, extra_env: dict[str, str] | None = None,
                fresh: bool = False) -> Iterator[LocalStack]:
    """Azurite + the devhost running `function_app:app` with the local platform; all stopped on exit.

    Their state stays in `state_dir` and is resumed by a later stack (`fresh`: started over), see `claim_state`."""
    from activities.adapter_store import AdapterStore, BlobStoreSettings
    from adapterctl.api import OrchestratorApi
    from devhost.azurite import Azurite
    from tinykit import build_kit

    state_dir, kit_dir = Path(state_dir).resolve(), Path(kit_dir).resolve()
    with ExitStack() as stack:
        resumed = stack.enter_context(claim_state(state_dir, fresh))
        print(f"{'resuming the' if resumed else 'new'} state in {state_dir}", flush=True)
        print(f"building the tiny model kit in {kit_dir} (skipped when already built)…", flush=True)
        kit = build_kit(kit_dir)
        api_key = _api_key(state_dir / "api-key")
        host_port = _free_port(port)
        azurite = stack.enter_context(Azurite(blob_port=azurite_port, location=state_dir / "azurite"))
        env = {
            **os.environ,
            "AdaptersStorage": azurite.connection_string,
            "AzureWebJobsStorage": azurite.connection_string,
            "PLATFORM": "local",
            "BASE_MODEL_NAME": kit.base_model_name,
            "MODEL_PATH": str(kit.base),
            "DEVHOST_STATE_DIR": str(state_dir),
            "ADAPTER_STORE_PATH": str(state_dir / "store"),
            "LOCAL_INFERENCE_PORT": str(inference_port),
            "INFERENCE_API_KEY": api_key,
            "ROLLOUT_POLL_INTERVAL_S": "0.2",
            "INFERENCE_SYNC_INTERVAL_S": "0.2",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "inference_image")]),
            **(extra_env or {}),
        }
        host_cmd = [sys.executable, "-m", "devhost", "serve", "--app", "function_app:app", "--port", str(host_port),
                    "--state-dir", str(state_dir / "durable"), "--poll-interval", "0.2"]
        stack.callback(_stop_local_apps, env)
        up = LocalStack(f"http://127.0.0.1:{host_port}", None, None, kit, api_key, state_dir, env,
                        _spawn(host_cmd, env, state_dir / "devhost.log"), host_cmd, azurite, resumed)
        stack.callback(lambda: _stop(up.host))
        url = up.url
        _wait_http(f"{url}/api/apps", 60, up.host)
        print(f"devhost up at {url} (Azurite at {azurite.blob_endpoint}; logs in {state_dir})", flush=True)
        store = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string))
        store.ensure_container()
        stack.callback(store.close)
        up.api, up.store = OrchestratorApi(url), store
        yield up


def _api_key(path: Path) -> str:
    """The chat API key kept in `path` (0600), made on first use: a resumed stack keeps its key."""
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    path.touch(0o600)
    path.write_text(key)
    return key


def run_up(args: argparse.Namespace) -> int:
    """`up`; exit 2 with a one-line reason when a port is taken or the state folder is refused, 1 when the demo
    does not reach its end or a child keeps exiting."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # `kill`, a closed terminal: as clean a stop as Ctrl-C
        signal.signal(sig, _interrupt)
    try:
        return _demo(args)
    except KeyboardInterrupt:  # Ctrl-C at any point: _demo's exit stack has stopped every child by now
        print("\nstopped", flush=True)
        return 0
    except OSError as exc:
        print(f"devhost up: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:
        print(f"devhost up: {exc}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _demo(args: argparse.Namespace) -> int:
    from tinykit import PHRASES

    if args.chat_page_port:
        _free_port(args.chat_page_port)
    with ExitStack() as stack:
        up = stack.enter_context(local_stack((ROOT / args.state_dir).resolve(), ROOT / args.kit_dir, args.port,
                                             args.azurite_port, args.inference_port, fresh=args.fresh))
        rows = []
        for name in ("alpha", "beta"):
            row = deploy_and_chat(up.api, up.store, args.app_name, name, up.kit.adapters[name], up.api_key,
                                  args.timeout)
            if PHRASES[name] not in row.reply:
                raise RuntimeError(f"{name} is live but the reply lacks its phrase {PHRASES[name]!r}: {row.reply!r}")
            rows.append(row)
        print_table(rows)
        endpoint = up.api.app(args.app_name)["endpoint"]
        key_file = up.state / "api-key"
        print(f"\nstatus API: {up.url}/api/apps/{args.app_name}\nchat API:   {endpoint}/v1/chat/completions "
              f"(model 'live'; API key in {key_file})", flush=True)
        if args.once:
            return 0
        watched = [Watched("Azurite", up.azurite.poll, up.azurite.restart),
                   Watched("devhost serve", lambda: up.host.poll(), up.start_host)]
        if args.chat_page_port:
            page_cmd = [sys.executable, "-m", "chat_page", "--api-url", endpoint, "--api-key-env", "INFERENCE_API_KEY",
                        "--port", str(args.chat_page_port), "--host", "127.0.0.1"]
            watched.append(stack.enter_context(child("chat page", page_cmd, up.env, up.state / "chat_page.log")))
            print(f"chat page:  http://127.0.0.1:{args.chat_page_port}", flush=True)
        print("serving until Ctrl-C…", flush=True)
        try:
            Supervisor(watched).run()
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; stopped everything (logs in {up.state})") from exc
    return 1


def _stop_local_apps(env: dict[str, str]) -> None:
    """Stop the inference servers the host started (they outlive a killed host by design), keeping their state:
    on a resumed stack the reconcilers' heal pass starts them again."""
    from activities.platform.local import LocalPlatform, LocalPlatformSettings

    state = Path(env["DEVHOST_STATE_DIR"])
    LocalPlatform(LocalPlatformSettings(state_dir=state / "platform", store_root=Path(env["ADAPTER_STORE_PATH"]))).stop_all(forget=False)


register(Subcommand("up", "run the whole loop locally: deploy adapters A then B and chat", configure, run_up))
