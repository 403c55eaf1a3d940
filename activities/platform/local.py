"""The "local" platform: the inference server as processes on this machine (the embedded default).

Each app runs `replica_count(spec)` replicas: `LocalPlatformSettings.replicas`, else the `LOCAL_REPLICAS` setting
(the orchestrator's environment, 1..8; `devhost up --replicas N`), else the spec's `max_replicas` (the template's
`maximumInstanceCount`, 1), capped at 8. The count is part of the spec hash: changing it restarts the app.

One replica: the app is one process, `python -m inference_server --engine E --model-path M --base-model-name B
--adapter-store <store_root>/<app> --host H --port P`, run from `inference_image/` in its own session (so a
stop reaches its children too), with its output in `<state_dir>/<app>.log`.

More than one: the app's process is the revision runner (`local_revision.py`, its docstring has the details), which
runs that command once per replica on loopback ports, replica i named `<app>--<n>-<i>`, behind a front on the app's
port that spreads requests round-robin as ACA's ingress does, and restarts a replica whose process exits (same
name). Replica output goes to the same log, each line prefixed `[<replica name>] `; the runner lists its live
replicas in `<state_dir>/<app>.replicas`, which `list_replicas` reads. A stop sends SIGTERM to the runner alone (it
stops its replicas, which drain), SIGKILL to the whole group after `stop_timeout`. With one replica the front is left
out: it adds a hop (about 1.2 ms per request at p50 in a same-run comparison of the stand-in server direct vs
through a one-replica runner, 500 sequential chat requests) and a process, for no spreading to do.

Runtime "container" (`LocalPlatformSettings.runtime`) runs the same server from the inference image instead, as ACA
runs it: `docker run --rm --network host` of `settings.image` (the CPU target, `make image`) with the image's own
non-root user, the base model mounted read-only at /models/base and `<store_root>/<app>` read-only at /adapters
(but for `_replicas`, where each replica writes its report, mounted writable over it),
the chat page off (devhost runs its own), and the environment passed by name only (`-e NAME`: the values reach the
container through the docker client's environment, never its command line). The process this platform tracks is
the docker client in the foreground: it forwards SIGTERM to the container (the server drains) and exits with it;
the container's name is kept in the state file and removed (`docker rm -f`) after every stop and before every
start, so a client killed hard leaves no container behind. With replicas, each is its own `docker run` client and
container, `<name>-<i>`, on its own port; the runner removes a replica's container before each start and after each
exit, the platform all of them after a stop.

Environment: the server gets only its own settings, never the orchestrator's (storage connection strings, account
keys, `AZURE_*`, the orchestrator's `INFERENCE_*`): the `INHERITED_ENV` names (system, locale, Python, torch / HF
offline, CUDA), `PYTHONPATH` with `inference_image/` first, the revision's names as ACA sets them
(`CONTAINER_APP_REVISION` `<app>--<n>`, `CONTAINER_APP_REPLICA_NAME` `<app>--<n>-<i>`: the server's report id, and
what `list_replicas` lists while the replica's process lives), `spec.env`, the test-only fault hooks
`INFERENCE_FAULT_REFUSE_LOAD`, `INFERENCE_FAULT_FAIL_CHAT` and `INFERENCE_FAULT_SLOW_CHAT(_MS)`
(inference_server/faults.py) each only when the orchestrator's environment sets it, and the
secrets as environment variables as on ACA (`inference-api-keys` → `INFERENCE_API_KEYS`). The admin key (`spec.generated_secrets`) is generated at the
app's first start, kept in its state file across restarts and passed as `INFERENCE_ADMIN_KEY`; secrets never
appear in the command line.

State lives in `<state_dir>/<app>.json` (pid, the process's start time to tell a reused pid apart, port, spec
hash, revision, the spec itself, secrets and generated secrets included, so the file is created 0600), so an
orchestrator host that restarts finds the running process again. `ensure_app` starts the app when it is missing or
dead, restarts it when the spec hash changed, and does nothing otherwise; every start is a new revision `<app>--<n>`.
`heal_app` restarts an app that was started and has died or stopped answering /health. A port once chosen is kept
across restarts (endpoints stay stable). Calls for one app are serialized with a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activities.config import LOCAL_REPLICAS_RANGE, local_replicas
from activities.platform.aca import AppNotFoundError, secret_env_name
from activities.platform.base import (
    AppSpec,
    AppState,
    EnsureResult,
    PlatformError,
    TransientPlatformError,
    generate_secrets,
)
from activities.validation import check_name
from inference_image.inference_server.faults import ENV_NAMES as FAULT_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
INFERENCE_IMAGE_DIR = REPO_ROOT / "inference_image"
#: Where a revision runner's replicas listen (the front alone listens on `LocalPlatformSettings.host`).
REPLICA_HOST = "127.0.0.1"
#: What the server inherits from the orchestrator's environment (plus `LC_*`); everything else stays out.
INHERITED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
    "VIRTUAL_ENV", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE",
    "TOKENIZERS_PARALLELISM", "TORCH_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
})
RUNTIMES = ("process", "container")
#: Where the inference image expects the base model and the adapter store (inference_image/Dockerfile).
IMAGE_MODEL_PATH = "/models/base"
IMAGE_ADAPTER_STORE = "/adapters"
#: The one folder of the store the server writes (its replica report, inference_server/replica_state.py): mounted
#: writable over the read-only store.
REPLICA_REPORTS = "_replicas"
#: What ACA sets in each replica's environment and the local platform sets alike (the report's id and revision).
REPLICA_ENV = ("CONTAINER_APP_REPLICA_NAME", "CONTAINER_APP_REVISION")
_INHERITED_PREFIXES = ("LC_",)
_LOG_TAIL_BYTES = 2000
_HEALTH_TRIES = 3  # heal_app: /health must fail this many times in a row


@dataclass(frozen=True)
class LocalPlatformSettings:
    """How local apps run. `port` 0: a free port per app (a fixed port suits a single app).
    `server_command` empty: `<this python> -m inference_server`; tests pass a stand-in script.
    `runtime` "container": the server in `image` through `docker` (the module docstring says how)."""

    state_dir: Path
    store_root: Path
    model_path: Path | None = None
    engine: str = "transformers"
    host: str = "127.0.0.1"
    port: int = 0
    server_command: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    cwd: Path = INFERENCE_IMAGE_DIR
    start_timeout: float = 120.0
    stop_timeout: float = 15.0
    health_timeout: float = 5.0  # seconds per /health request when heal_app checks a running process
    runtime: str = "process"
    image: str = "lora-inference:cpu"
    docker: str = "docker"
    replicas: int | None = None  # replicas per app; None: LOCAL_REPLICAS, else the spec's max_replicas


    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"LocalPlatformSettings.runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.runtime == "container" and not self.image:
            raise ValueError("LocalPlatformSettings.image must name an image for the container runtime")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"LocalPlatformSettings.port {self.port} is out of range")
        low, high = LOCAL_REPLICAS_RANGE
        if self.replicas is not None and not low <= self.replicas <= high:
            raise ValueError(f"LocalPlatformSettings.replicas {self.replicas} is not within {low}..{high}")
        if min(self.start_timeout, self.stop_timeout, self.health_timeout) <= 0:
            raise ValueError("LocalPlatformSettings.start_timeout, stop_timeout and health_timeout must be > 0")


@dataclass
class _ProcessState:
    """What `<state_dir>/<app>.json` holds."""

    app: str
    pid: int
    proc_start: str | None
    port: int
    spec_hash: str
    revision: int
    started_at: str
    command: list[str]
    spec: dict[str, Any] = field(repr=False)
    generated: dict[str, str] = field(default_factory=dict, repr=False)  # generated secrets: name -> value
    container: str | None = None  # the container runtime's container name (with replicas: `<name>-<i>` each)
    replicas: int = 1  # > 1: `pid` is the revision runner's


class LocalPlatform:
    """`Platform` running each app as a local process."""

    def __init__(self, settings: LocalPlatformSettings) -> None:
        self.settings = settings
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # started here: reaped here

    # -- Platform ------------------------------------------------------------------------------------------
    def ensure_app(self, spec: AppSpec) -> EnsureResult:
        """Start when missing or dead, restart when the spec changed; no action when it runs as asked."""
        app = check_name("app", spec.app)
        with self._locked(app):
            state = self._load(app)
            digest = self._spec_hash(spec)
            if state and self._alive(state) and state.spec_hash == digest:
                return EnsureResult(self._describe(state), changed=False)
            if state:
                self._stop_process(state)
            state = self._start(spec, digest, revision=(state.revision if state else 0) + 1, previous=state)
            return EnsureResult(self._describe(state), changed=True)

    def describe_app(self, app: str) -> AppState:
        state = self._load(check_name("app", app))
        return self._describe(state) if state else AppState(app=app, exists=False)

    def restart_app(self, app: str) -> AppState:
        """Stop and start the app with its recorded spec: a new revision."""
        app = check_name("app", app)
        with self._locked(app):
            state = self._load(app)
            if state is None:
                raise AppNotFoundError(f"local app {app!r} was never started")
            return self._describe(self._restart(state))

    def heal_app(self, app: str) -> dict[str, str]:
        """Start the app again (same port, store and spec, next revision) when its process has exited or does not
        answer /health; an app never started (or stopped with `stop_app`) is left alone."""
        app = check_name("app", app)
        with self._locked(app):
            state = self._load(app)
            reason = self._unhealthy(state) if state else None
            if state is None or reason is None:
                return {"action": "none"}
            self._restart(state)
            return {"action": "restarted", "reason": reason}

    def stop_app(self, app: str, forget: bool = True) -> None:
        """Stop the app's process (idempotent); `forget` also drops its state, else `heal_app` starts it again."""
        app = check_name("app", app)
        with self._locked(app):
            state = self._load(app)
            if state:
                self._stop_process(state)
                if forget:
                    self._state_path(app).unlink(missing_ok=True)

    def delete_app(self, app: str) -> bool:
        """Stop the app and drop its state (port, revision, generated admin key), log and lock; False when it was
        never started."""
        existed = self.describe_app(app).exists
        self.stop_app(app, forget=True)
        for leftover in (self._log_path(app), self._replicas_path(app), Path(self.settings.state_dir) / f".{app}.lock"):
            leftover.unlink(missing_ok=True)
        return existed

    def list_replicas(self, app: str) -> list[str]:
        """The replicas whose process is alive: the one process's (`replica_name`), or those the revision runner
        lists in its replicas file."""
        state = self._load(check_name("app", app))
        if state is None or not self._alive(state):
            return []
        if state.replicas == 1:
            return [replica_name(app, state.revision)]
        try:
            listed = json.loads(self._replicas_path(app).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if listed.get("runner_pid") != state.pid:
            return []  # a previous runner's file
        return sorted(name for name, info in (listed.get("replicas") or {}).items() if _pid_alive(int(info["pid"])))

    def replica_count(self, spec: AppSpec) -> int:
        """Replicas of `spec`'s app: `settings.replicas`, else LOCAL_REPLICAS, else the spec's `max_replicas`
        (the template's maximumInstanceCount), within 1..8."""
        low, high = LOCAL_REPLICAS_RANGE
        wanted = self.settings.replicas or local_replicas(os.environ) or spec.max_replicas
        return max(low, min(high, wanted))

    def stop_all(self, forget: bool = True) -> list[str]:
        """Stop every app this state dir knows; returns their names (`forget`: as in `stop_app`)."""
        apps = sorted(p.stem for p in Path(self.settings.state_dir).glob("*.json"))
        for app in apps:
            self.stop_app(app, forget)
        return apps

    # -- processes -----------------------------------------------------------------------------------------
    def command_for(self, spec: AppSpec, port: int, revision: int = 0) -> list[str]:
        """The app's command line on `port`: the server's (for the container runtime, the `docker run` one), or with
        more than one replica the revision runner's, which runs that command per replica."""
        replicas = self.replica_count(spec)
        if replicas == 1:
            return self._server_command(spec, str(port), self.settings.host, self.container_name(spec.app))
        runner = [sys.executable, "-m", "activities.platform.local_revision", "--replicas", str(replicas),
                  "--revision", revision_name(spec.app, revision), "--host", self.settings.host, "--port", str(port),
                  "--replicas-file", str(self._replicas_path(spec.app)), "--cwd", str(self.settings.cwd)]
        container = f"{self.container_name(spec.app)}-{{replica}}"
        if self.settings.runtime == "container":
            runner += ["--docker", self.settings.docker, "--container", container]
        return runner + ["--", *self._server_command(spec, "{port}", REPLICA_HOST, container)]

    def _server_command(self, spec: AppSpec, port: str, host: str, container: str) -> list[str]:
        """One server's command line (`port` may be the runner's `{port}` placeholder)."""
        s = self.settings
        in_image = s.runtime == "container"
        store = IMAGE_ADAPTER_STORE if in_image else str(Path(s.store_root) / spec.app)
        cmd = self._docker_run(spec, port, host, container) if in_image else list(
            s.server_command or (sys.executable, "-m", "inference_server"))
        cmd += ["--engine", s.engine]
        if s.model_path is not None:
            cmd += ["--model-path", IMAGE_MODEL_PATH if in_image else str(s.model_path)]
        if spec.base_model:
            cmd += ["--base-model-name", spec.base_model]
        cmd += ["--adapter-store", store, "--host", host, "--port", port]
        return cmd + list(s.extra_args)

    def _containers(self, base: str, replicas: int) -> list[str]:
        """The container names of an app run as `base` with `replicas` replicas."""
        return [base] if replicas == 1 else [f"{base}-{i}" for i in range(replicas)]

    def container_name(self, app: str) -> str:
        """The app's container: one per app and state dir (two devhosts on one engine do not meet)."""
        scope = hashlib.sha256(str(Path(self.settings.state_dir).resolve()).encode()).hexdigest()[:8]
        return f"lora-{scope}-{app}"

    def _docker_run(self, spec: AppSpec, port: str, host: str, name: str) -> list[str]:
        """`docker run … IMAGE python -m inference_server`: mounts read-only, environment by name only (but the
        port and host, which the image's HEALTHCHECK reads from INFERENCE_PORT, not from the server's flags)."""
        s = self.settings
        cmd = [s.docker, "run", "--rm", "--name", name, "--network", "host",
               "-v", f"{Path(s.store_root).resolve() / spec.app}:{IMAGE_ADAPTER_STORE}:ro",
               "-v", f"{Path(s.store_root).resolve() / spec.app / REPLICA_REPORTS}:{IMAGE_ADAPTER_STORE}/"
                     f"{REPLICA_REPORTS}"]
        if s.model_path is not None:
            cmd += ["-v", f"{Path(s.model_path).resolve()}:{IMAGE_MODEL_PATH}:ro"]
        faults = [n for n in FAULT_ENV if os.environ.get(n)]
        for env_name in sorted({"CHAT_PAGE_ENABLED", *REPLICA_ENV, *spec.env, *self._secret_env(spec, {}), *faults}):
            cmd += ["-e", env_name]
        cmd += ["-e", f"INFERENCE_PORT={port}", "-e", f"INFERENCE_HOST={host}"]
        return cmd + [s.image, "python", "-m", "inference_server"]

    @staticmethod
    def _secret_env(spec: AppSpec, generated: dict[str, str]) -> dict[str, str]:
        """The secrets as the server reads them (`inference-api-keys` → `INFERENCE_API_KEYS`); generated ones are
        named by `spec.generated_secrets` even before they have a value."""
        values = {name: "" for name in spec.generated_secrets} | dict(spec.secrets) | generated
        return {secret_env_name(name): value for name, value in values.items()}

    @staticmethod
    def environment(spec: AppSpec, generated: dict[str, str], revision: int) -> dict[str, str]:
        """The server's environment: `INHERITED_ENV` from ours, PYTHONPATH, the revision's names as ACA sets them
        (`REPLICA_ENV`), `spec.env`, then the secrets."""
        env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith(_INHERITED_PREFIXES)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INFERENCE_IMAGE_DIR), os.environ.get("PYTHONPATH")) if p)
        env["CHAT_PAGE_ENABLED"] = "0"  # the image's start.sh: the server alone (devhost runs the page)
        env["CONTAINER_APP_REVISION"] = revision_name(spec.app, revision)
        env["CONTAINER_APP_REPLICA_NAME"] = replica_name(spec.app, revision)  # a revision runner sets each's own
        env.update({name: os.environ[name] for name in FAULT_ENV if os.environ.get(name)})
        env.update(spec.env)
        env.update(LocalPlatform._secret_env(spec, generated))
        return env

    def _restart(self, state: _ProcessState) -> _ProcessState:
        self._stop_process(state)
        spec = _spec_from_dict(state.spec)
        return self._start(spec, state.spec_hash, revision=state.revision + 1, previous=state)

    def _start(
        self, spec: AppSpec, digest: str, revision: int, previous: _ProcessState | None
    ) -> _ProcessState:
        port = (
            previous.port
            if previous and _port_free(self.settings.host, previous.port)
            else self.settings.port
        )
        if port == 0:
            port = _free_port(self.settings.host)
        elif not _port_free(self.settings.host, port):
            raise PlatformError(f"port {port} on {self.settings.host} is in use; cannot start {spec.app!r}")
        replicas = self.replica_count(spec)
        command = self.command_for(spec, port, revision)
        generated = generate_secrets(spec, previous.generated if previous else {})
        Path(self.settings.state_dir).mkdir(parents=True, exist_ok=True)
        container = None
        if self.settings.runtime == "container":
            container = self.container_name(spec.app)
            self._prepare_container(spec.app, self._containers(container, replicas))
        log_path = self._log_path(spec.app)
        with open(log_path, "ab") as log:
            log.write(f"\n--- revision {revision} at {_now()}: {command[:3]} ... port {port}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=self.settings.cwd if replicas == 1 else REPO_ROOT,
                    env=self.environment(spec, generated, revision),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PlatformError(f"cannot start {command[0]!r} for {spec.app!r}: {exc}") from exc
        self._children[proc.pid] = proc
        state = _ProcessState(
            app=spec.app,
            pid=proc.pid,
            proc_start=_proc_start(proc.pid),
            port=port,
            spec_hash=digest,
            revision=revision,
            started_at=_now(),
            command=command,
            spec=asdict(spec),
            generated=generated,
            container=container,
            replicas=replicas,
        )
        self._save(state)
        self._wait_healthy(state)
        return state

    def _health_url(self, state: _ProcessState) -> str:
        return f"http://{_connect_host(self.settings.host)}:{state.port}/health"

    def _wait_healthy(self, state: _ProcessState) -> None:
        url = self._health_url(state)
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            if not self._alive(state):
                tail = self._log_tail(state.app)
                if "address already in use" in tail.lower():
                    raise TransientPlatformError(
                        f"{state.app!r}: port {state.port} was taken at start:\n{tail}"
                    )
                raise PlatformError(f"{state.app!r} exited during start:\n{tail}")
            if _answers(url, timeout=1):
                return
            time.sleep(0.1)
        raise TransientPlatformError(
            f"{state.app!r} did not answer /health within {self.settings.start_timeout}s:\n{self._log_tail(state.app)}"
        )

    def _unhealthy(self, state: _ProcessState) -> str | None:
        """Why the app's process needs a restart, or None when it runs and answers /health."""
        if not self._alive(state):
            proc = self._children.get(state.pid)
            code = proc.returncode if proc is not None else None
            if code is None:  # started by another host: no exit status to read
                return f"process {state.pid} has exited"
            return f"process exited with code {code}{_signal_name(code)}"
        url = self._health_url(state)
        for _ in range(_HEALTH_TRIES):
            if _answers(url, self.settings.health_timeout):
                return None
            time.sleep(0.2)
        return f"process {state.pid} does not answer /health"

    def _prepare_container(self, app: str, names: list[str]) -> None:
        """The image must exist; a container left by a client killed hard is removed; the store folder exists
        (else docker would create it, owned by root)."""
        if self._docker("image", "inspect", self.settings.image).returncode != 0:
            raise PlatformError(f"no image {self.settings.image!r} in the local docker engine: build it with "
                                "`make image` (or set LOCAL_INFERENCE_IMAGE)")
        for name in names:
            self._docker("rm", "-f", "-v", name)
        store = Path(self.settings.store_root) / app
        store.mkdir(parents=True, exist_ok=True)
        reports = store / REPLICA_REPORTS
        reports.mkdir(exist_ok=True)
        reports.chmod(0o1777)  # the image's user writes its report here (sticky: none removes another's file)
        for path in (store, self.settings.model_path):
            if path is not None and (blocked := _closed_to_others(Path(path))):
                raise PlatformError(
                    f"the image's user cannot read {path}: {blocked} is closed to other users (the container runs "
                    f"as the image's own non-root user, as on ACA); `chmod o+rX {blocked}`, or keep the state and "
                    "the model where others can read them")

    def _docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the docker client (its output captured); no engine or no client is a PlatformError."""
        try:
            result = subprocess.run([self.settings.docker, *args], capture_output=True, text=True, timeout=60,
                                    stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PlatformError(f"docker {args[0]}: {exc}") from exc
        if "Cannot connect to the Docker daemon" in result.stderr:
            raise PlatformError(f"docker {args[0]}: no docker engine answers ({result.stderr.strip()})")
        return result

    def _stop_process(self, state: _ProcessState) -> None:
        """SIGTERM the process group (the server drains; a revision runner alone, which stops its replicas), SIGKILL
        the group after `stop_timeout`; then the containers, if any, are removed."""
        if not self._alive(state):
            self._reap(state.pid)
            self._remove_containers(state)
            return
        for sig, wait in ((signal.SIGTERM, self.settings.stop_timeout), (signal.SIGKILL, 5.0)):
            try:
                if sig == signal.SIGTERM and state.replicas > 1:
                    os.kill(state.pid, sig)  # not the group: each replica would get SIGTERM twice
                else:
                    os.killpg(state.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self._alive(state) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._alive(state):
                break
        self._reap(state.pid)
        self._remove_containers(state)
        if self._alive(state):
            raise PlatformError(f"{state.app!r} (pid {state.pid}) did not stop")

    def _remove_containers(self, state: _ProcessState) -> None:
        if state.container:
            for name in self._containers(state.container, state.replicas):
                self._docker("rm", "-f", "-v", name)

    def _reap(self, pid: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._children[pid] = proc

    def _alive(self, state: _ProcessState) -> bool:
        proc = self._children.get(state.pid)
        if proc is not None:
            return proc.poll() is None
        if state.proc_start is not None:  # Linux: tell a reused pid apart, and a zombie from a live process
            stat = _proc_stat(state.pid)
            return stat is not None and stat[0] != "Z" and stat[1] == state.proc_start
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _describe(self, state: _ProcessState) -> AppState:
        alive = self._alive(state)
        return AppState(
            app=state.app,
            exists=True,
            endpoint=f"http://{_connect_host(self.settings.host)}:{state.port}",
            revision=revision_name(state.app, state.revision),
            replicas=(1 if state.replicas == 1 else len(self.list_replicas(state.app))) if alive else 0,
            running=alive,
            image=self.settings.image if state.container else state.spec.get("image"),
            command=list(state.spec.get("command") or []),
        )

    def _spec_hash(self, spec: AppSpec) -> str:
        """Everything that shapes the process except the port we pick: spec (secrets too) and server command."""
        material = {"spec": asdict(spec), "command": self.command_for(spec, 0)}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    # -- state files -----------------------------------------------------------------------------------------
    def _state_path(self, app: str) -> Path:
        return Path(self.settings.state_dir) / f"{app}.json"

    def _log_path(self, app: str) -> Path:
        return Path(self.settings.state_dir) / f"{app}.log"

    def _replicas_path(self, app: str) -> Path:
        """Where a revision runner lists its live replicas."""
        return Path(self.settings.state_dir) / f"{app}.replicas"

    def _load(self, app: str) -> _ProcessState | None:
        try:
            data = json.loads(self._state_path(app).read_text(encoding="utf-8"))
            return _ProcessState(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise PlatformError(f"state file {self._state_path(app)} is unreadable: {exc}") from exc

    def _save(self, state: _ProcessState) -> None:
        path = self._state_path(state.app)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(state), fh, indent=1)
        os.replace(tmp, path)

    def _log_tail(self, app: str) -> str:
        try:
            with open(self._log_path(app), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    @contextmanager
    def _locked(self, app: str) -> Iterator[None]:
        Path(self.settings.state_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(self.settings.state_dir) / f".{app}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def revision_name(app: str, revision: int) -> str:
    """A local revision's name, `<app>--<n>` (ACA: `<app>--<suffix>`)."""
    return f"{app}--{revision}"


def replica_name(app: str, revision: int) -> str:
    """The name of a local revision's replica, `<app>--<n>-0`: its `CONTAINER_APP_REPLICA_NAME`, so its report id."""
    return f"{revision_name(app, revision)}-0"


def _spec_from_dict(data: dict[str, Any]) -> AppSpec:
    return AppSpec(**{
        **data,
        "command": list(data.get("command") or []),
        "generated_secrets": tuple(data.get("generated_secrets") or ()),
    })


def _closed_to_others(path: Path) -> Path | None:
    """The first folder or file in `path` (itself included) that a user other than its owner cannot enter or read;
    None when all are open. Folders above it do not matter: docker mounts `path` itself. (ACLs and group membership
    are not considered.)"""
    path = path.resolve()
    for item in [path, *(sorted(path.rglob("*")) if path.is_dir() else [])]:
        need = 0o005 if item.is_dir() else 0o004
        if item.stat().st_mode & need != need:
            return item
    return None


def _signal_name(code: int) -> str:
    """The signal's name for a negative exit code (-9: ' (SIGKILL)'); '' for a normal exit or an unnamed signal."""
    try:
        return f" ({signal.Signals(-code).name})" if code < 0 else ""
    except ValueError:
        return ""


def _answers(url: str, timeout: float) -> bool:
    """True when GET `url` answers 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def _pid_alive(pid: int) -> bool:
    """True while process `pid` runs (not a zombie)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _proc_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    with socket.socket() as s:
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as the server binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
