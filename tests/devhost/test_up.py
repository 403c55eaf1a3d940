"""`python -m devhost up`, the README's demo command: the whole loop, a taken port, and Ctrl-C cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tinykit import PHRASES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def up_command(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "devhost", "up", "--port", "0", "--chat-page-port", "0",
            "--state-dir", str(state), *extra]


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
    """`up --once` deploys alpha then beta, prints both replies and the stage table, and exits 0."""
    out = subprocess.run(up_command(tmp_path / "state", "--once"), cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"→ '{PHRASES['alpha']}'" in out.stdout and f"→ '{PHRASES['beta']}'" in out.stdout
    assert "upload→live" in out.stdout and "| beta |" in out.stdout
    assert processes_using(tmp_path / "state") == []


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


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_every_child_process(tiny_kit, tmp_path: Path, stop_signal: int) -> None:
    """Serving mode prints the URLs; SIGINT (Ctrl-C) or SIGTERM stops Azurite, the host and the inference server."""
    state = tmp_path / "state"
    proc = subprocess.Popen(up_command(state), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "serving until Ctrl-C" in line or not line:
            break
    assert "serving until Ctrl-C" in lines[-1], "".join(lines)
    assert any("chat API:" in line for line in lines) and any("status API:" in line for line in lines)
    assert processes_using(state), "the stack should be running"
    proc.send_signal(stop_signal)
    assert proc.wait(timeout=60) == 0, proc.stdout.read()
    deadline = time.monotonic() + 10
    while processes_using(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(state) == []
