"""`adapterctl` against devhost: every command, as a user runs it (a subprocess), with `--json` parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapterctl.conftest import SETTINGS, write_connection
from tests.e2e.helpers import variant
from tinykit import PHRASES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def adapterctl(stack, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict | list | None, str]:
    """Run `python -m adapterctl --json ...`; returns (exit code, parsed JSON or None, stdout)."""
    base = {**os.environ, "ADAPTERCTL_URL": stack.url, "ADAPTERS_STORAGE_CONNECTION": stack.env["AdaptersStorage"],
            "INFERENCE_API_KEY": stack.api_key, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "adapterctl", "--json", "--timeout", "180", *args],
                          capture_output=True, text=True, env=base, cwd=ROOT, timeout=300)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    return proc.returncode, data, proc.stdout + proc.stderr


def test_deploy_status_apps_chat(local_stack) -> None:
    """deploy to an unknown app is refused without --create (nothing uploaded); with it, deploy follows the rollout
    to live; status, apps and chat then show and use it."""
    code, out, text = adapterctl(local_stack, "deploy", str(local_stack.kit.adapters["alpha"]), "--app", "cli")
    assert code == 2 and "there is no app 'cli'" in out["reason"] and "--create" in out["reason"], text
    assert local_stack.api.deployments("cli") == []
    code, out, text = adapterctl(local_stack, "deploy", str(local_stack.kit.adapters["alpha"]), "--app", "cli",
                                 "--create")
    assert code == 0 and out["stage"] == "live", text
    deployment_id = out["id"]
    code, one, _ = adapterctl(local_stack, "status", deployment_id)
    assert code == 0 and one["id"] == deployment_id and one["stage"] == "live"
    code, recent, _ = adapterctl(local_stack, "status", "--app", "cli")
    assert code == 0 and deployment_id in [r["id"] for r in recent]
    code, apps, _ = adapterctl(local_stack, "apps")
    assert code == 0 and "cli" in [a["app"] for a in apps]
    code, reply, text = adapterctl(local_stack, "chat", "cli", "Hello!", "--temperature", "0", "--max-tokens", "24")
    assert code == 0 and PHRASES["alpha"] in reply["reply"], text
    code, again, _ = adapterctl(local_stack, "deploy", str(local_stack.kit.adapters["alpha"]), "--app", "cli")
    assert code == 0 and again["stage"] == "live" and again.get("already_live") is True, again


def test_deploy_of_bad_adapters_exits_non_zero_with_reason(local_stack, tmp_path: Path) -> None:
    """A locally invalid adapter exits 2 before upload; one the orchestrator rejects exits 1 with its reason."""
    alpha = local_stack.kit.adapters["alpha"]
    code, out, _ = adapterctl(local_stack, "deploy", str(variant(alpha, tmp_path / "rank", r=64)), "--app", "clibad",
                              "--max-rank", "16", "--create")
    assert code == 2 and "rank_too_large" in out["reason"]
    oversize = variant(alpha, tmp_path / "big")
    (oversize / "notes.txt").write_bytes(b"x" * (2 << 20))  # passes the local 2 GiB cap, not the app's 1 MiB
    code, out, text = adapterctl(local_stack, "deploy", str(oversize), "--app", "clibad", "--create")
    assert code == 1 and out["stage"] == "failed" and "too_large" in out["reason"], text


def test_provision_and_restart(local_stack) -> None:
    """provision and restart follow their orchestrations to the end."""
    code, out, text = adapterctl(local_stack, "provision", "cliops")
    assert code == 0 and out["state"] == "provisioned", text
    code, out, text = adapterctl(local_stack, "restart", "cliops")
    assert code == 0 and out["state"] == "ready", text


def test_unreachable_orchestrator_is_a_clear_error(local_stack) -> None:
    """A wrong URL exits 3 naming the URL, with no traceback."""
    code, out, text = adapterctl(local_stack, "apps", env={"ADAPTERCTL_URL": "http://127.0.0.1:9"})
    assert code == 3 and "not reachable at http://127.0.0.1:9" in out["reason"] and "Traceback" not in text


def test_config_check_names_each_problem(local_stack, tmp_path: Path) -> None:
    """config check passes on the template's files with settings, and names every problem otherwise."""
    good = {"BASE_MODEL_NAME": "tiny-llama", "PLATFORM": "local"}
    code, out, _ = adapterctl(local_stack, "config", "check", "--infra", str(ROOT / "infra"), env=good)
    assert code == 0 and out == {"ok": True, "problems": []}
    (tmp_path / "inference.config.json").write_text(json.dumps({"SUBSCRIPTION_ID": "x"}))
    env = {"BASE_MODEL_NAME": "", "PLATFORM": "gpu-cloud"}
    code, out, _ = adapterctl(local_stack, "config", "check", "--infra", str(tmp_path), env=env)
    assert code == 1 and not out["ok"]
    text = "\n".join(out["problems"])
    assert "RESOURCE_GROUP_NAME" in text and "inference.parameters.json" in text and "PLATFORM" in text


def test_finds_the_stack_by_its_connection_file(local_stack, tmp_path: Path) -> None:
    """No flag or environment: run where `make demo` left .devhost/up/connection.env, every command finds the stack;
    deploy prints its upload and stages as plain lines, status a table and a summary, chat the reply."""
    write_connection(tmp_path / ".devhost" / "up", {
        "ADAPTERCTL_URL": local_stack.url, "ADAPTERS_STORAGE_CONNECTION": local_stack.env["AdaptersStorage"],
        "INFERENCE_API_KEY": local_stack.api_key})
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}

    def plain(*args: str) -> tuple[int, str]:
        proc = subprocess.run([sys.executable, "-m", "adapterctl", "--timeout", "180", *args], capture_output=True,
                              text=True, env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=300)
        assert proc.stderr == "", proc.stderr
        return proc.returncode, proc.stdout

    code, out = plain("deploy", str(local_stack.kit.adapters["beta"]), "--app", "cliconn", "--create")
    assert code == 0 and "uploaded 2 files, " in out and out.splitlines()[-1].endswith(": live"), out
    deployment_id = out.splitlines()[-1].split(":")[0]
    code, out = plain("status", "--app", "cliconn")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "ADAPTER", "STAGE"]
    assert out.splitlines()[1].split()[:3] == [deployment_id, "beta", "live"]
    code, out = plain("status", deployment_id)
    assert code == 0 and out.startswith(f"{deployment_id}: live\n") and "stages:\n  received" in out
    code, out = plain("chat", "cliconn", "Hello!", "--temperature", "0", "--max-tokens", "24")
    assert code == 0 and PHRASES["beta"] in out
