"""Start and stop the Azurite storage emulator (npm `azurite`, pinned in package.json) for the devhost and tests.

`Azurite` runs `node_modules/.bin/azurite-blob` (and `azurite-queue` when asked) on loopback, in memory or, with
`location`, keeping its data in that folder (a later start on the same folder sees it again), waits until each
service answers HTTP, and exposes the endpoints plus a connection string built from them with the emulator's
well-known `devstoreaccount1` key. Port 0 lets Azurite pick a free port (read back from its output); a port
already in use raises `PortInUseError` naming it. Stopping terminates, then kills after a grace period;
`restart()` starts again on the ports already bound, so endpoints and connection strings stay valid.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ACCOUNT_NAME = "devstoreaccount1"
# The emulator's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"successfully listens on (https?://\S+?):(\d+)")
_IN_USE = re.compile(r"EADDRINUSE.*?:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite could not be started (not installed, exited early, or did not answer in time)."""


class PortInUseError(AzuriteError, OSError):
    """The requested port is already taken by another process."""

    def __init__(self, service: str, port: int) -> None:
        super().__init__(f"Azurite {service} port {port} is already in use; pick another port or pass 0")
        self.port = port


@dataclass
class _Service:
    """One Azurite process (blob or queue) and what it printed."""

    name: str
    port: int
    process: subprocess.Popen[str] | None = None
    bound_port: int | None = None
    output: list[str] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None


class Azurite:
    """Context manager running Azurite blob (and optionally queue) on `host`, in memory unless `location` is set."""

    def __init__(
        self,
        blob_port: int = 0,
        *,
        queue_port: int | None = None,
        host: str = "127.0.0.1",
        location: Path | None = None,
        bin_dir: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """`queue_port` None: no queue service; 0: a free port. `location`: the data folder (created if missing);
        None keeps everything in memory. `bin_dir` defaults to the repo's node_modules/.bin."""
        self.host = host
        self.location = Path(location).resolve() if location else None
        self.bin_dir = Path(bin_dir) if bin_dir else REPO_ROOT / "node_modules" / ".bin"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._services = [_Service("blob", blob_port)]
        if queue_port is not None:
            self._services.append(_Service("queue", queue_port))

    # -- endpoints ---------------------------------------------------------------------------------------
    def _endpoint(self, name: str) -> str:
        for svc in self._services:
            if svc.name == name and svc.bound_port is not None:
                return f"http://{self.host}:{svc.bound_port}/{ACCOUNT_NAME}"
        raise AzuriteError(f"Azurite {name} service is not running")

    @property
    def blob_endpoint(self) -> str:
        """`http://127.0.0.1:<port>/devstoreaccount1`."""
        return self._endpoint("blob")

    @property
    def queue_endpoint(self) -> str:
        return self._endpoint("queue")

    @property
    def connection_string(self) -> str:
        """Connection string for the running services, with the well-known development key."""
        parts = [
            "DefaultEndpointsProtocol=http",
            f"AccountName={ACCOUNT_NAME}",
            f"AccountKey={ACCOUNT_KEY}",
            f"BlobEndpoint={self.blob_endpoint}",
        ]
        if any(s.name == "queue" for s in self._services):
            parts.append(f"QueueEndpoint={self.queue_endpoint}")
        return ";".join(parts) + ";"

    @property
    def running(self) -> bool:
        """True while every service process is alive."""
        return all(s.process is not None and s.process.poll() is None for s in self._services)

    def poll(self) -> int | None:
        """None while every service runs; else the exit status of one that ended (-1: not started)."""
        for svc in self._services:
            code = -1 if svc.process is None else svc.process.poll()
            if code is not None:
                return code
        return None

    @property
    def pids(self) -> list[int]:
        """Process ids of the running services (for diagnostics)."""
        return [s.process.pid for s in self._services if s.process is not None]

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> Azurite:
        """Start every service and wait until each answers HTTP; on failure nothing is left running."""
        try:
            for svc in self._services:
                self._start_service(svc)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_service(self, svc: _Service) -> None:
        exe = self.bin_dir / f"azurite-{svc.name}"
        if not exe.exists():
            found = shutil.which(f"azurite-{svc.name}")
            if not found:
                raise AzuriteError(f"{exe} not found; run `npm install` in {REPO_ROOT}")
            exe = Path(found)
        if self.location:
            self.location.mkdir(parents=True, exist_ok=True)
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        cmd = [
            str(exe), *storage, "--skipApiVersionCheck", "--disableTelemetry", "--silent",
            f"--{svc.name}Host", self.host, f"--{svc.name}Port", str(svc.port),
        ]  # fmt: skip
        svc.output.clear()
        svc.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
            start_new_session=True,  # a terminal's Ctrl-C or hangup reaches only our process; stop() ends it cleanly
        )
        svc.reader = threading.Thread(target=self._pump, args=(svc,), daemon=True, name=f"azurite-{svc.name}")
        svc.reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not svc.listening.wait(0.05):
            if svc.process.poll() is not None or time.monotonic() > deadline:
                self._raise_start_failure(svc)
        while not self._answers(svc):
            if svc.process.poll() is not None or time.monotonic() > deadline:
                self._raise_start_failure(svc)
            time.sleep(0.05)

    @staticmethod
    def _pump(svc: _Service) -> None:
        assert svc.process is not None and svc.process.stdout is not None
        for line in svc.process.stdout:
            svc.output.append(line.rstrip())
            if match := _LISTENING.search(line):
                svc.bound_port = int(match.group(2))
                svc.listening.set()

    def _answers(self, svc: _Service) -> bool:
        url = f"http://{self.host}:{svc.bound_port}/{ACCOUNT_NAME}?comp=properties&restype=service"
        try:
            urllib.request.urlopen(url, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # any HTTP answer (403 without auth) means it is serving
        except OSError:
            return False
        return True

    def _raise_start_failure(self, svc: _Service) -> None:
        assert svc.process is not None
        try:
            svc.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        else:
            if svc.reader is not None:
                svc.reader.join(timeout=1)  # let it collect the last lines
        text = "\n".join(svc.output)
        if match := _IN_USE.search(text):
            raise PortInUseError(svc.name, int(match.group(1)))
        if svc.process.poll() is None:
            raise AzuriteError(f"Azurite {svc.name} did not answer within {self.startup_timeout}s:\n{text}")
        raise AzuriteError(f"Azurite {svc.name} exited with {svc.process.returncode}:\n{text}")

    def restart(self) -> Azurite:
        """Stop (whatever still runs) and start again on the ports bound before, with the same `location`."""
        ports = [svc.bound_port or svc.port for svc in self._services]
        self.stop()
        for svc, port in zip(self._services, ports, strict=True):
            svc.port = port
        return self.start()

    def stop(self) -> None:
        """Terminate each process, then kill it if it has not exited after `stop_timeout` seconds."""
        for svc in self._services:
            proc = svc.process
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
            if svc.reader is not None:
                svc.reader.join(timeout=self.stop_timeout)  # reads to EOF, then the pipe can be closed
            if proc.stdout is not None and not (svc.reader and svc.reader.is_alive()):
                proc.stdout.close()
            svc.process = None
            svc.bound_port = None
            svc.listening.clear()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
