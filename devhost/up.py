"""`python -m devhost up`: the whole product loop on one machine, with no cloud.

Builds the tiny model kit if missing, starts Azurite and the local Durable host running `function_app:app`
(as a child process, with the local platform: the inference server runs as a process too), uploads adapter
`alpha`, waits until it is live, chats, then does the same with `beta`, and prints a table of stage timings.
Then it keeps serving (the chat page too) until Ctrl-C, SIGTERM or SIGHUP (`--once`: exit after the table),
starting again a child that exits (`devhost.supervisor`). URLs are printed once they answer. A stop signal prints
"stopping…" and stops every child process it started within a few seconds (SIGTERM to all at once, SIGKILL
after `STOP_GRACE_S`).

Everything lives in the state folder (Azurite's blobs, the Durable history, the adapter store, logs, the chat API
key), marked as ours by a `.devhost-state` file: a later `up` on it resumes (orchestrations continue where they
were); `--fresh` starts over. A non-empty folder without the mark is neither used nor deleted. On every start
`up` writes `<state>/connection.env` (0600): `export NAME='value'` lines with the URLs, the storage connection
string and the chat API key, for `source` and for `adapterctl`, which reads it when no flag or variable says
otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from devhost.cli import Subcommand, register
from devhost.host import PortInUseError
from devhost.image import LABEL_FORMAT, labelled_sources, sources_digest
from devhost.supervisor import Supervisor, Watched

ROOT = Path(__file__).resolve().parent.parent
DEMO_MESSAGE = "Hello! Who are you?"
STATE_MARKER = ".devhost-state"
CONNECTION_FILE = "connection.env"
#: The connection file's names, in the order written (`adapterctl.connection` reads the same names).
CONNECTION_NAMES = ("ADAPTERCTL_URL", "ADAPTERS_STORAGE_CONNECTION", "INFERENCE_API_KEY", "CHAT_API_URL",
                    "CHAT_PAGE_URL", "DEVHOST_STATE_DIR")
#: Seconds a child gets between SIGTERM and SIGKILL when the stack stops.
STOP_GRACE_S = 2.0


class StateDirError(OSError):
    """The state folder cannot be used: not ours and not empty, or in use by another `up`."""


@dataclass
class RolloutTiming:
    adapter: str
    upload_to_live_s: float
    stages: dict[str, float]  # stage -> seconds after the upload
    outcome: str
    reply: str


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 meaning any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free port)")
    return port


def replica_count(text: str) -> int:
    """argparse type: replicas per app, 1..8 (the LOCAL_REPLICAS setting's range)."""
    from activities.config import LOCAL_REPLICAS_RANGE

    low, high = LOCAL_REPLICAS_RANGE
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not low <= count <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not a replica count ({low}-{high})")
    return count


def platform_settings(args: argparse.Namespace) -> dict[str, str]:
    """The local platform's settings for the host `up` starts: runtime, image, and LOCAL_REPLICAS when given."""
    settings = {"LOCAL_RUNTIME": args.runtime, "LOCAL_INFERENCE_IMAGE": args.image}
    if args.replicas is not None:
        settings["LOCAL_REPLICAS"] = str(args.replicas)
    return settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-name", default="demo", help="the inference app to deploy to (default %(default)s)")
    parser.add_argument("--port", type=port_number, default=7071,
                        help="status API (orchestrator) port (default %(default)s; 0: any free port)")
    parser.add_argument("--azurite-port", type=port_number, default=0,
                        help="Azurite blob port (default 0: any free port)")
    parser.add_argument("--inference-port", type=port_number, default=0,
                        help="chat API (inference server) port (default 0: any free port)")
    parser.add_argument("--chat-page-port", type=port_number, default=7860,
                        help="chat page port (default %(default)s; 0: any free port)")
    parser.add_argument("--no-chat-page", action="store_true", help="do not start the chat page")
    parser.add_argument("--state-dir", default=".devhost/up",
                        help="state folder, resumed when an earlier `up` made it; it gets connection.env, to "
                             "`source` (default %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: delete the state folder first (only one made by `up`)")
    parser.add_argument("--kit-dir", default="build/tinykit/llama", help="tiny model kit folder")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each rollout")
    parser.add_argument("--once", action="store_true", help="stop everything and exit after the timing table")
    parser.add_argument("--runtime", choices=("process", "container"), default="process",
                        help="how each app's inference server runs: a process (default), or a container from the "
                        "inference image through the local docker engine, as ACA runs it (`make image` builds it)")
    parser.add_argument("--image", default="lora-inference:cpu",
                        help="the image for --runtime container (default %(default)s)")
    parser.add_argument("--replicas", type=replica_count, default=None,
                        help="replicas per app (1-8) behind a local front that spreads requests as ACA's ingress "
                        "does; sets LOCAL_REPLICAS for the host (default: the template's maximumInstanceCount)")


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


def _start_host(cmd: list[str], env: dict[str, str], state_dir: Path, url: str) -> subprocess.Popen:
    """The host process, once its own route answers 200 at `url` (another server on the port is not enough);
    `RuntimeError` when it exits first (its port taken), stopped and `TimeoutError` when it never answers."""
    host = _spawn(cmd, env, state_dir / "devhost.log")
    try:
        _wait_http(f"{url}/api/apps", 60, host, expect_ok=True)
    except TimeoutError:
        stop_processes([host])
        raise
    return host


def _start_host_on_a_port(port: int, state_dir: Path, env: dict[str, str], tries: int = 3
                          ) -> tuple[int, list[str], subprocess.Popen]:
    """(port, command, process) of the host started on `port`, or with 0 on a free one. A port picked here can be
    taken by another process before the host binds it (Azurite's own port 0 once did), so then another is tried."""
    for attempt in range(1, tries + 1):
        host_port = port or free_port()
        cmd = [sys.executable, "-m", "devhost", "serve", "--app", "function_app:app", "--port", str(host_port),
               "--state-dir", str(state_dir / "durable"), "--poll-interval", "0.2"]
        try:
            return host_port, cmd, _start_host(cmd, env, state_dir, f"http://127.0.0.1:{host_port}")
        except RuntimeError:
            if port or attempt == tries:
                raise
            print(f"port {host_port} was taken before the host bound it; trying another", flush=True)
    raise AssertionError("unreachable")


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A child process in its own session (so Ctrl-C reaches only us), its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_processes(procs: Iterable[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every running one at once, then SIGKILL those still running after `grace_s`."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Child:
    """A child process that can be started again with the same command (for the `Supervisor`)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc = _spawn(cmd, env, log_path)

    def restart(self) -> None:
        self.proc = _spawn(self.cmd, self.env, self.log_path)

    def watched(self) -> Watched:
        return Watched(self.name, lambda: self.proc.poll(), self.restart)


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


def _bind(port: int) -> int:
    """Bind a socket on loopback as our servers do (TIME_WAIT connections of an earlier run are no obstacle; a
    listener is) and return its port; `OSError` when taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock.getsockname()[1]


def free_port() -> int:
    """A port nothing listens on now."""
    return _bind(0)


def check_ports(wanted: dict[str, int]) -> None:
    """Each flag's port (0: any, not checked) must be free and asked by one flag only; `PortInUseError` naming the
    flag to change otherwise."""
    asked: dict[int, str] = {}
    for flag, port in wanted.items():
        if not port:
            continue
        if port in asked:
            raise PortInUseError(f"{asked[port]} and {flag} both ask for port {port}; pass another {flag} "
                                 f"(0: any free port)")
        asked[port] = flag
        try:
            _bind(port)
        except OSError as exc:
            raise PortInUseError(f"port {port} on 127.0.0.1 is already in use; pass another {flag} "
                                 f"(0: any free port)") from exc


def check_image(image: str) -> None:
    """--runtime container: the local docker engine answers and has `image`; an OSError saying what to do otherwise
    (before anything starts, rather than a rollout failing on it)."""
    try:
        found = subprocess.run(["docker", "image", "inspect", "-f", LABEL_FORMAT, image], capture_output=True,
                               text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"--runtime container needs the docker client and engine: {exc}") from exc
    if found.returncode != 0:
        detail = found.stderr.strip().splitlines()[-1] if found.stderr.strip() else "not found"
        raise OSError(f"--runtime container: no image {image!r} in the local docker engine ({detail}); build it "
                      "with `make image`, or pass --image")
    built_from = labelled_sources(found.stdout)
    if built_from != sources_digest():
        print(f"devhost up: warning: image {image!r} was not built from the inference_image/ sources here"
              f"{'' if built_from else ' (it has no sources label)'}, so it may serve other code: `make image` "
              "rebuilds it", file=sys.stderr, flush=True)


def _quoted(value: str) -> str:
    """`value` for a shell, always in single quotes (`shlex.quote` leaves plain words bare)."""
    quoted = shlex.quote(value)
    return quoted if quoted.startswith("'") else f"'{quoted}'"


def write_connection(path: Path, values: dict[str, str]) -> None:
    """`export NAME='value'` lines for the set `CONNECTION_NAMES`, written to `path` atomically with mode 0600."""
    lines = [f"# the running `python -m devhost up`; load with: source {path}\n"]
    lines += [f"export {name}={_quoted(values[name])}\n" for name in CONNECTION_NAMES if values.get(name)]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # O_CREAT keeps an existing file's mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    """Everything `up` started: the status API client, the upload store, the kit and the chat API key; the host
    and other `children`; what `connection_file` holds."""

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
    platform: Any = None
    children: list[Child] = field(default_factory=list)
    connection: dict[str, str] = field(default_factory=dict)

    @property
    def connection_file(self) -> Path:
        return self.state / CONNECTION_FILE

    def publish(self, **values: str) -> None:
        """Add `values` (names of `CONNECTION_NAMES`) to the connection file and write it again."""
        self.connection.update(values)
        write_connection(self.connection_file, self.connection)

    def start_child(self, name: str, cmd: list[str], log_name: str) -> Child:
        """A process stopped with the stack (first, with the host), its output in `<state>/<log_name>`."""
        started = Child(name, cmd, self.env, self.state / log_name)
        self.children.append(started)
        return started

    def process_ids(self) -> list[int]:
        """Every process of the stack: Azurite, the host and what it started (inference servers included)."""
        import psutil

        pids = [*self.azurite.pids, self.host.pid, *(c.proc.pid for c in self.children)]
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
        self.host = _start_host(self.host_cmd, self.env, self.state, self.url)

    def stop(self) -> None:
        """Stop everything within about twice `STOP_GRACE_S`: the children (the chat page) at once; the host, and
        once it is gone (so no rollout starts a server again) the inference servers and Azurite together (their
        state is kept: on a resumed stack the reconcilers' heal pass starts the servers again)."""

        def host_then_servers() -> None:
            stop_processes([self.host])
            _all_at_once([self.azurite.stop, *_app_stoppers(self.platform)])

        _all_at_once([host_then_servers, lambda: stop_processes([c.proc for c in self.children])])


def _local_platform(env: dict[str, str]) -> Any:
    """The local platform the host uses, to stop the inference servers it started (they outlive a killed host by
    design) with `STOP_GRACE_S` between SIGTERM and SIGKILL. Made at start: importing it takes a second."""
    from activities.platform.local import LocalPlatform, LocalPlatformSettings

    return LocalPlatform(LocalPlatformSettings(state_dir=Path(env["DEVHOST_STATE_DIR"]) / "platform",
                                               store_root=Path(env["ADAPTER_STORE_PATH"]), stop_timeout=STOP_GRACE_S))


def _app_stoppers(platform: Any) -> list[Callable[[], object]]:
    """One call per app the platform knows that stops its server and keeps its state."""
    apps = sorted(p.stem for p in Path(platform.settings.state_dir).glob("*.json"))
    return [lambda app=app: platform.stop_app(app, forget=False) for app in apps]


def _all_at_once(calls: list[Callable[[], object]]) -> None:
    """Run `calls` in parallel; a failure is one line on stderr, and the others still run."""
    if not calls:
        return
    with ThreadPoolExecutor(len(calls), thread_name_prefix="devhost-up-stop") as pool:
        for future in [pool.submit(call) for call in calls]:
            if (exc := future.exception()) is not None:
                print(f"devhost up: stopping: {exc}", file=sys.stderr, flush=True)


@contextmanager
def local_stack(state_dir: Path, kit_dir: Path, port: int = 0, azurite_port: int = 0,
                inference_port: int = 0, extra_env: dict[str, str] | None = None,
                fresh: bool = False) -> Iterator[LocalStack]:
    """Azurite + the devhost running `function_app:app` with the local platform; all stopped on exit.

    Ports: 0 is any free one; a taken one raises `PortInUseError` naming the `up` flag. Their state stays in
    `state_dir` and is resumed by a later stack (`fresh`: started over), see `claim_state`; the connection file
    there is written as soon as the host answers."""
    from activities.adapter_store import AdapterStore, BlobStoreSettings
    from adapterctl.api import OrchestratorApi
    from devhost.azurite import Azurite
    from tinykit import build_kit

    state_dir, kit_dir = Path(state_dir).resolve(), Path(kit_dir).resolve()
    check_ports({"--port": port, "--azurite-port": azurite_port, "--inference-port": inference_port})
    with ExitStack() as stack:
        resumed = stack.enter_context(claim_state(state_dir, fresh))
        print(f"{'resuming the' if resumed else 'new'} state in {state_dir}", flush=True)
        print(f"building the tiny model kit in {kit_dir} (skipped when already built)…", flush=True)
        kit = build_kit(kit_dir)
        api_key = _api_key(state_dir / "api-key")
        azurite = stack.enter_context(Azurite(blob_port=azurite_port, location=state_dir / "azurite",
                                              stop_timeout=STOP_GRACE_S))
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
        store = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string))
        stack.callback(store.close)
        store.ensure_container()  # before the host starts: its first polls and requests find the container
        platform = _local_platform(env)
        host_port, host_cmd, host = _start_host_on_a_port(port, state_dir, env)
        up = LocalStack(f"http://127.0.0.1:{host_port}", None, store, kit, api_key, state_dir, env, host, host_cmd,
                        azurite, resumed, platform)
        stack.callback(up.stop)
        up.publish(ADAPTERCTL_URL=up.url, ADAPTERS_STORAGE_CONNECTION=azurite.connection_string,
                   INFERENCE_API_KEY=api_key, DEVHOST_STATE_DIR=str(state_dir))
        print(f"devhost up at {up.url} (Azurite at {azurite.blob_endpoint}; logs in {state_dir})", flush=True)
        up.api = OrchestratorApi(up.url)
        yield up


def _api_key(path: Path) -> str:
    """The chat API key kept in `path` (0600), made on first use: a resumed stack keeps its key."""
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    path.touch(0o600)
    path.write_text(key)
    return key


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_up(args: argparse.Namespace) -> int:
    """`up`; exit 2 with a one-line reason when a port is taken or the state folder is refused, 1 when the demo
    does not reach its end or a child keeps exiting, 0 when stopped by a signal."""
    for sig in STOP_SIGNALS:  # Ctrl-C (even when started with it ignored, `cmd &`), `kill`, a closed terminal
        signal.signal(sig, _interrupt)
    try:
        return _demo(args)
    except KeyboardInterrupt:  # a stop signal at any point: _demo's exit stack has stopped every child by now
        with suppress(OSError):
            print("stopped", flush=True)
        return 0
    except OSError as exc:
        print(f"devhost up: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:
        print(f"devhost up: {exc}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: object) -> None:
    """The first stop signal: say so, ignore the next ones (nothing cuts the stopping short), unwind."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    with suppress(OSError):  # no terminal any more (SIGHUP)
        os.write(sys.stdout.fileno(), "\nstopping…\n".encode())  # not print: this may run inside a print
    raise KeyboardInterrupt


def _shown(path: Path) -> str:
    """`path` relative to the working folder when inside it (as a user would type it), else absolute."""
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def _demo(args: argparse.Namespace) -> int:
    from tinykit import PHRASES

    page_port = None if args.no_chat_page else args.chat_page_port or free_port()
    check_ports({"--port": args.port, "--azurite-port": args.azurite_port, "--inference-port": args.inference_port,
                 **({} if page_port is None else {"--chat-page-port": page_port})})
    if args.runtime == "container":
        check_image(args.image)
    with ExitStack() as stack:
        up = stack.enter_context(local_stack((ROOT / args.state_dir).resolve(), ROOT / args.kit_dir, args.port,
                                             args.azurite_port, args.inference_port,
                                             extra_env=platform_settings(args),
                                             fresh=args.fresh))
        rows: list[RolloutTiming] = []
        page: Child | None = None
        for name in ("alpha", "beta"):
            row = deploy_and_chat(up.api, up.store, args.app_name, name, up.kit.adapters[name], up.api_key,
                                  args.timeout)
            if PHRASES[name] not in row.reply:
                raise RuntimeError(f"{name} is live but the reply lacks its phrase {PHRASES[name]!r}: {row.reply!r}")
            rows.append(row)
            endpoint = up.api.app(args.app_name)["endpoint"]
            up.publish(CHAT_API_URL=f"{endpoint}/v1")
            if page is None and page_port is not None and not args.once:  # it starts while the next rollout runs
                page = up.start_child("chat page", [
                    sys.executable, "-m", "chat_page", "--api-url", endpoint, "--api-key-env", "INFERENCE_API_KEY",
                    "--port", str(page_port), "--host", "127.0.0.1"], "chat_page.log")
        print_table(rows)
        if args.once:
            print("\nstopping…", flush=True)
            return 0
        watched = [Watched("Azurite", up.azurite.poll, up.azurite.restart),
                   Watched("devhost serve", lambda: up.host.poll(), up.start_host)]
        _wait_http(f"{up.url}/api/dashboard", 30, up.host, expect_ok=True)
        urls = [f"dashboard:  {up.url}/api/dashboard",
                f"status API: {up.url}/api/apps/{args.app_name}",
                f"chat API:   {up.connection['CHAT_API_URL']}/chat/completions (model 'live')"]
        if page is not None:
            page_url = f"http://127.0.0.1:{page_port}"
            _wait_http(page_url, 120, page.proc)
            up.publish(CHAT_PAGE_URL=page_url)
            watched.append(page.watched())
            urls.append(f"chat page:  {page_url}")
        print("", *urls, f"settings (URLs, API key, storage connection): source {shlex.quote(_shown(up.connection_file))}",
              sep="\n", flush=True)
        print("serving until Ctrl-C…", flush=True)
        try:
            Supervisor(watched).run()
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; stopped everything (logs in {up.state})") from exc
    return 1


register(Subcommand("up", "run the whole loop locally: deploy adapters A then B and chat, then serve", configure,
                    run_up))
