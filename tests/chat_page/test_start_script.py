"""`inference_image/start.sh`, the image's supervisor (it puts its own folder on PYTHONPATH): when the page fails,
the server is stopped too and the page's status is the script's (the browser tests cover start and SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tinykit import KitPaths

IMAGE = Path(__file__).resolve().parents[2] / "inference_image"


def test_page_failure_stops_server(tiny_kit: KitPaths, tmp_path: Path) -> None:
    """A page that cannot start (bad API URL: exit 2) stops the server and ends the script with status 2."""
    env = {**os.environ, "PYTHON": sys.executable,
           "CHAT_PAGE_API_URL": "not-a-url", "CHAT_PAGE_HOST": "127.0.0.1"}
    done = subprocess.run(
        ["bash", str(IMAGE / "start.sh"), sys.executable, "-m", "inference_server", "--engine", "transformers",
         "--model-path", str(tiny_kit.base), "--adapter-store", str(tmp_path), "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "api_url must be an http(s) URL" in done.stderr
    assert "the chat page exited (2); stopped the server" in done.stderr


def test_page_disabled_runs_default_server_alone(tmp_path: Path) -> None:
    """CHAT_PAGE_ENABLED=0 with no command execs `$PYTHON -m inference_server` alone (its errors come back)."""
    env = {k: v for k, v in os.environ.items() if k != "INFERENCE_MODEL_PATH"}
    env |= {"PYTHON": sys.executable, "CHAT_PAGE_ENABLED": "0"}
    done = subprocess.run(["bash", str(IMAGE / "start.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "--model-path" in done.stderr and "chat page" not in done.stderr
