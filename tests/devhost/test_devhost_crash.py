"""Crash and resume: a host killed with SIGKILL mid-orchestration finishes it after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from devhost.http_front import WEBHOOK_PATH

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.devhost.apps.durable_samples:app"


async def start_host(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m devhost serve`` on a free port and return the process and its origin."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost", "serve", "--app", APP, "--app-dir", str(ROOT), "--port", "0",
         "--state-dir", str(state_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.startswith("devhost listening on "), line
    return proc, line.split()[3]


@pytest.mark.slow
async def test_sigkill_mid_chain_then_restart_completes(tmp_path):
    """Kill -9 after a few activities; the restarted host resumes from SQLite and returns 10."""
    state = tmp_path / "state"
    proc, origin = await start_host(state)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{origin}/api/orchestrators/chain", json={"n": 10, "sleep": 0.05}) as resp:
                assert resp.status == 202
                instance_id = (await resp.json())["id"]
            status_url = f"{origin}{WEBHOOK_PATH}/instances/{instance_id}"
            step = 0
            while step < 3:
                async with http.get(status_url) as resp:
                    step = ((await resp.json()).get("customStatus") or {}).get("step", 0)
                await asyncio.sleep(0.01)
        assert step < 10
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, origin = await start_host(state)
    try:
        async with aiohttp.ClientSession() as http:
            status_url = f"{origin}{WEBHOOK_PATH}/instances/{instance_id}"
            for _ in range(500):
                async with http.get(status_url) as resp:
                    body = await resp.json()
                if resp.status == 200:
                    break
                await asyncio.sleep(0.02)
        assert (body["runtimeStatus"], body["output"]) == ("Completed", 10)
        assert json.dumps(body["customStatus"]) == json.dumps({"step": 10})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
