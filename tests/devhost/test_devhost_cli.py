"""CLI: subcommand registry, clear errors for a port in use and a bad app."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devhost.cli import SUBCOMMANDS, build_parser, load_local_settings, main

ROOT = Path(__file__).resolve().parents[2]


def test_serve_is_registered_with_defaults():
    """serve is in the registry and defaults to function_app:app on port 7071."""
    assert "serve" in SUBCOMMANDS
    args = build_parser().parse_args(["serve"])
    assert (args.app, args.port, args.state_dir) == ("function_app:app", 7071, ".devhost")


def test_port_in_use_names_the_port(tmp_path, capsys):
    """A taken port exits 2 with a message naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--app", "tests.devhost.apps.durable_samples:app", "--port", str(port),
                     "--state-dir", str(tmp_path)])
    assert code == 2
    assert f"port {port}" in capsys.readouterr().err


def test_bad_app_is_reported(tmp_path, capsys):
    """An app module that cannot be imported exits 2 naming the module."""
    code = main(["serve", "--app", "no_such_module_xyz:app", "--state-dir", str(tmp_path), "--port", "0"])
    assert code == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_local_settings_fill_only_unset_variables(tmp_path, monkeypatch):
    """Values from local.settings.json are exported unless the environment already has them."""
    settings = tmp_path / "local.settings.json"
    settings.write_text('{"IsEncrypted": false, "Values": {"DH_TEST_A": "from-file", "DH_TEST_B": "from-file"}}')
    monkeypatch.setenv("DH_TEST_B", "from-env")
    monkeypatch.delenv("DH_TEST_A", raising=False)
    assert load_local_settings(settings) == ["DH_TEST_A"]
    assert (os.environ["DH_TEST_A"], os.environ["DH_TEST_B"]) == ("from-file", "from-env")
    monkeypatch.delenv("DH_TEST_A")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_serve_stops_promptly_with_an_activity_running(tmp_path, stop_signal):
    """SIGTERM, SIGHUP or SIGINT ends `serve` within a few seconds with status 0, even while an activity sleeps
    in a worker thread (it is abandoned; a later host resumes the orchestration)."""
    proc = subprocess.Popen([sys.executable, "-m", "devhost", "serve", "--app", "tests.devhost.apps.durable_samples:app",
                             "--port", "0", "--state-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        while not (url := re.search(r"listening on (http://\S+)", lines[-1] if lines else "")):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)  # serve exited before listening
        started = requests.post(f"{url[1]}/api/orchestrators/chain", json={"n": 1, "sleep": 60}, timeout=10)
        assert started.status_code == 202, started.text
        time.sleep(0.5)  # the activity is now sleeping in its thread
        begun = time.monotonic()
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - begun < 5, f"stopped after {time.monotonic() - begun:.1f}s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
