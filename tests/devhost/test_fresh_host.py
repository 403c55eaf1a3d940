"""`function_app:app` on a fresh devhost (Azurite without the upload container, nothing uploaded yet): the status
API answers and the host logs no traceback (issue #13 saw `ContainerNotFound` ones in every demo log)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devhost.azurite import Azurite

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_host(tmp_path: Path):
    """The base URL of `devhost serve` running the function app on an empty Azurite; its log file."""
    log_path = tmp_path / "devhost.log"
    with Azurite() as azurite, open(log_path, "w") as log:
        env = {**os.environ, "AdaptersStorage": azurite.connection_string,
               "AzureWebJobsStorage": azurite.connection_string, "PLATFORM": "local", "BASE_MODEL_NAME": "tiny",
               "DEVHOST_STATE_DIR": str(tmp_path), "INFERENCE_API_KEY": "unused", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "devhost", "serve", "--port", "0", "--poll-interval", "0.2",
                                 "--state-dir", str(tmp_path / "durable")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (url := re.search(r"listening on (http://\S+)", log_path.read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield url[1], log_path
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_fresh_host_answers_and_logs_no_traceback(fresh_host) -> None:
    url, log_path = fresh_host
    apps = requests.get(f"{url}/api/apps", timeout=30)
    assert (apps.status_code, apps.json()) == (200, {"apps": []})
    time.sleep(1)  # the blob poller has listed the container a few times by now
    assert "Traceback" not in log_path.read_text()
