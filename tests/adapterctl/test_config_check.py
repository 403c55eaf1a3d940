"""`adapterctl config check` without a stack: fails closed when PLATFORM=aca has no chat API key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACA = {"BASE_MODEL_NAME": "tiny-llama", "PLATFORM": "aca", "INFERENCE_IMAGE": "ghcr.io/org/inference:1"}


def config_check(env: dict[str, str], *extra: str, json_out: bool = True) -> tuple[int, dict | str]:
    """`python -m adapterctl [--json] config check` on the example infra files with only `env` as app settings."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "adapterctl", *(["--json"] if json_out else []), "config", "check", "--infra",
         str(ROOT / "infra"), *extra],
        capture_output=True, text=True, env={**base, **env}, cwd=ROOT, timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout) if json_out else proc.stdout + proc.stderr


def test_aca_without_api_key_is_reported_missing() -> None:
    """PLATFORM=aca without INFERENCE_API_KEY exits 1 naming the key as missing; with a key it passes."""
    code, out = config_check(ACA)
    assert code == 1 and not out["ok"]
    (problem,) = out["problems"]
    assert problem.startswith("INFERENCE_API_KEY in environment: missing")
    code, out = config_check({**ACA, "INFERENCE_API_KEY": "chat-key"})
    assert code == 0 and out == {"ok": True, "problems": []}


def test_settings_file_is_checked_over_the_environment(tmp_path: Path) -> None:
    """--settings reads a Functions local.settings.json's Values (the example passes as shipped, the README's line);
    without it, missing settings come with a hint naming --settings; a file that is not one is bad input (2)."""
    code, out = config_check({}, "--settings", str(ROOT / "local.settings.example.json"))
    assert code == 0 and out == {"ok": True, "problems": []}
    aca = tmp_path / "aca.json"
    aca.write_text(json.dumps({"IsEncrypted": False, "Values": ACA}))
    code, out = config_check({}, "--settings", str(aca))
    assert code == 1 and out["problems"][0].startswith("INFERENCE_API_KEY in environment: missing")
    code, text = config_check({}, json_out=False)
    assert code == 1 and "BASE_MODEL_NAME in environment: missing" in text and "--settings FILE" in text
    code, text = config_check({}, "--settings", str(ROOT / "README.md"), json_out=False)
    assert code == 2 and text.startswith("adapterctl: --settings") and text.count("\n") == 1
