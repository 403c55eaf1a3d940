"""`adapterctl config check` without a stack: fails closed when PLATFORM=aca has no chat API key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACA = {"BASE_MODEL_NAME": "tiny-llama", "PLATFORM": "aca", "INFERENCE_IMAGE": "ghcr.io/org/inference:1"}


def config_check(env: dict[str, str]) -> tuple[int, dict]:
    """`python -m adapterctl --json config check` on the example infra files with only `env` as app settings."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "adapterctl", "--json", "config", "check", "--infra", str(ROOT / "infra")],
        capture_output=True, text=True, env={**base, **env}, cwd=ROOT, timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_aca_without_api_key_is_reported_missing() -> None:
    """PLATFORM=aca without INFERENCE_API_KEY exits 1 naming the key as missing; with a key it passes."""
    code, out = config_check(ACA)
    assert code == 1 and not out["ok"]
    (problem,) = out["problems"]
    assert problem.startswith("INFERENCE_API_KEY in environment: missing")
    code, out = config_check({**ACA, "INFERENCE_API_KEY": "chat-key"})
    assert code == 0 and out == {"ok": True, "problems": []}
