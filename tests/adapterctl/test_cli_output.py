"""What adapterctl prints and how it exits, against a fake orchestrator: tables with headers, a readable record,
one JSON document with `--json`, one-line input errors, and a quiet end when the reader of a pipe goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapterctl.conftest import Run
from tests.adapterctl.fake_api import FakeApi, record

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["received", "validating", "staging", "provisioning", "activating", "verifying"]


def test_status_of_an_app_is_a_table_with_headers(run: Run, api: FakeApi) -> None:
    """One header row, then one row per record with its id, adapter, stage, time and reason (`-` when none)."""
    live = record("demo.20261130T141411000000-u1", "live", [*STAGES, "live"])
    failed = record("demo.20261130T141500000000-u2", "rolled_back", STAGES, reason="smoke chat failed")
    api.routes["/api/apps/demo/deployments"] = (200, {"app": "demo", "deployments": [failed, live]})
    code, out, err = run("--url", api.url, "status", "--app", "demo")
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == 3
    assert lines[0].split() == ["ID", "ADAPTER", "STAGE", "ACCEPTED", "(UTC)", "REASON"]
    assert lines[1].split() == [failed["id"], "beta", "rolled_back", "2026-11-30", "14:14:11", "smoke", "chat",
                                "failed"]
    assert lines[2].split() == [live["id"], "beta", "live", "2026-11-30", "14:14:11", "-"]
    assert lines[0].index("STAGE") == lines[1].index("rolled_back") == lines[2].index("live")


def test_status_of_one_record_is_a_summary_and_json_only_with_the_flag(run: Run, api: FakeApi) -> None:
    """`status ID`: its stage, fields and each stage's time after the first; `--json`: the record as served."""
    rec = record("demo.20261130T141411000000-u1", "rolled_back", [*STAGES, "rolled_back"],
                 reason="verify: smoke chat failed", cause="content", sha256="ab" * 32)
    api.routes[f"/api/deployments/{rec['id']}"] = (200, rec)
    code, out, _ = run("--url", api.url, "status", rec["id"])
    assert code == 0
    assert out.splitlines()[0] == f"{rec['id']}: rolled_back"
    assert "  reason    verify: smoke chat failed" in out.splitlines()
    assert "  accepted  2026-11-30 14:14:11 UTC" in out.splitlines()
    stages = out.split("stages:\n")[1].splitlines()
    assert [s.split() for s in stages] == [["received", "2026-11-30", "14:14:11", "UTC"],
                                           *[[s, f"+{i}.00s"] for i, s in enumerate(STAGES[1:] + ["rolled_back"], 1)]]
    code, out, _ = run("--json", "--url", api.url, "status", rec["id"])
    assert code == 0 and json.loads(out) == rec


def test_apps_table_marks_an_endpoint_without_a_server(run: Run, api: FakeApi) -> None:
    api.routes["/api/apps"] = (200, {"apps": ["demo", "idle"]})
    api.routes["/api/apps/demo"] = (200, {"app": "demo", "served": {"version": "beta-a8d5"},
                                          "endpoint": "http://127.0.0.1:8001", "running": True})
    api.routes["/api/apps/idle"] = (200, {"app": "idle", "served": None, "endpoint": "http://127.0.0.1:8002",
                                          "running": False})
    code, out, _ = run("--url", api.url, "apps")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["APP", "SERVED", "VERSION", "ENDPOINT"], ["demo", "beta-a8d5", "http://127.0.0.1:8001"],
        ["idle", "(base)", "http://127.0.0.1:8002", "(not", "running)"]]


@pytest.mark.parametrize("argv, message", [
    (["--url", "127.0.0.1:7071", "apps"], "--url must start with http:// or https:// (got '127.0.0.1:7071')"),
    (["status"], "status needs a deployment ID or --app APP"),
    (["deploy", "."], "the following arguments are required: --app (see adapterctl deploy --help)"),
    (["apps", "--bogus"], "unrecognized arguments: --bogus (see adapterctl --help)"),
    (["chat", "demo", "hi", "--endpoint", "localhost:8000"],
     "--endpoint must start with http:// or https:// (got 'localhost:8000')"),
    (["deploy", ".", "--app", "demo"], "no upload storage: give --storage-connection or --account-url (or the "
                                       "environment's ADAPTERS_STORAGE_CONNECTION / ADAPTERS_ACCOUNT_URL), or "
                                       "start `make demo` here"),
    (["deploy", "no-such-dir", "--app", "demo", "--storage-connection", "x"], "no adapter folder 'no-such-dir'"),
    (["deploy", ".", "--app", "demo", "--storage-connection", "x", "--base-model", "m"],
     "invalid adapter '.': missing_config: adapter_config.json is missing"),
])
def test_input_errors_exit_2_with_one_line(run: Run, argv: list[str], message: str) -> None:
    code, out, err = run(*argv)
    assert (code, out, err) == (2, "", f"adapterctl: {message}\n")


def test_url_from_the_environment_is_named_in_its_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTERCTL_URL", "localhost:7071")
    code, _, err = run("apps")
    assert code == 2 and err == "adapterctl: ADAPTERCTL_URL must start with http:// or https:// (got 'localhost:7071')\n"


def test_json_errors_are_one_document(run: Run, api: FakeApi) -> None:
    """With --json a failure is still one JSON document on stdout (and one line on stderr); an unknown id (404) is
    bad input (2)."""
    code, out, err = run("--json", "--url", api.url, "status", "demo.20261130T141411000000-u9")
    assert code == 2 and json.loads(out)["status"] == 404 and err.startswith("adapterctl: no route GET")
    code, out, _ = run("--json", "--url", "ftp://x", "apps")
    assert code == 2 and json.loads(out) == {"ok": False, "reason": "--url must start with http:// or https:// "
                                                                      "(got 'ftp://x')"}


def test_a_failed_rollout_exits_1_with_its_reason_and_stages_as_lines(run: Run, api: FakeApi) -> None:
    """restart follows the instance to its end: each stage once, as a plain line, then the outcome."""
    steps = [record("restart-demo.20261130T141411000000", STAGES[i], STAGES[: i + 1]) for i in range(3)]
    steps.append(record("restart-demo.20261130T141411000000", "failed", [*STAGES[:3], "failed"], reason="boom"))
    api.routes["/api/apps/demo/restart"] = (202, {"id": steps[0]["id"]})
    api.deployments[steps[0]["id"]] = steps
    code, out, _ = run("--url", api.url, "restart", "demo")
    lines = out.splitlines()
    assert code == 1 and lines[0] == f"restart {steps[0]['id']}"
    assert [line.split()[0] for line in lines[1:-1]] == [*STAGES[:3], "failed"]
    assert lines[-1] == f"{steps[0]['id']}: failed — boom"


def _big_status(api: FakeApi) -> None:
    """Far more output than a pipe holds, so the writer is still writing when `head` leaves."""
    records = [record(f"demo.20261130T1414{i:08d}-u{i}", "live", [*STAGES, "live"]) for i in range(2000)]
    api.routes["/api/apps/demo/deployments"] = (200, {"app": "demo", "deployments": records})


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_output_into_head_ends_quietly(api: FakeApi, json_flag: list[str]) -> None:
    """`adapterctl status --app demo | head -n 2` through a real pipe: head prints its lines, adapterctl exits 141
    (128 + SIGPIPE, as a shell reports a cut pipe) with nothing on stderr."""
    _big_status(api)
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERCTL_URL"}
    writer = subprocess.Popen([sys.executable, "-m", "adapterctl", *json_flag, "--url", api.url, "status", "--app",
                               "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    head = subprocess.run(["head", "-n", "2"], stdin=writer.stdout, capture_output=True, timeout=60)
    writer.stdout.close()
    err = writer.stderr.read()
    assert writer.wait(timeout=60) == 141
    assert err == b"" and len(head.stdout.splitlines()) == 2


def test_help_says_where_defaults_come_from_and_the_exit_codes() -> None:
    from adapterctl.cli import build_parser

    text = build_parser().format_help()
    for needed in ("connection.env", "$DEVHOST_STATE_DIR", "./.devhost/up", "ADAPTERS_STORAGE_CONNECTION",
                   "INFERENCE_API_KEY", "exit status:", "  2    bad usage", "  3    the orchestrator", "  141  "):
        assert needed in text, needed



def test_ctrl_c_while_following_exits_130_with_one_line(api: FakeApi) -> None:
    """SIGINT while a restart is followed: the open stage line is closed, one line says what happened, exit 130."""
    api.any_deployment = [record("x", "staging", STAGES[:3])]
    api.routes["/api/apps/demo/restart"] = (202, {"id": "restart-demo.20261130T141411000000"})
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERCTL_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "adapterctl", "--url", api.url, "restart", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    lines = [proc.stdout.readline() for _ in range(4)]  # the id, then three stages
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and [line.split()[0] for line in lines[1:]] == STAGES[:3]
    assert out == "" and err == ("adapterctl: interrupted; what was already started goes on "
                                 "(`adapterctl status`)\n")


def test_json_after_the_command_and_an_unknown_model_is_bad_input(run: Run, api: FakeApi) -> None:
    """`status --json --app X` works like `--json status --app X`; a chat with a --model the server does not know
    (OpenAI's 404 model_not_found) is bad input: exit 2 with the server's message on one line."""
    rec = record("demo.20261130T141411000000-u1", "live", [*STAGES, "live"])
    api.routes["/api/apps/demo/deployments"] = (200, {"app": "demo", "deployments": [rec]})
    code, out, _ = run("--url", api.url, "status", "--json", "--app", "demo")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [rec["id"]]
    api.routes["/api/apps/demo"] = (200, {"app": "demo", "endpoint": api.url, "manifest": {"alias": "live"}})
    api.chat_error = (404, {"error": {"message": "The model 'nope' does not exist", "type": "invalid_request_error",
                                      "param": None, "code": "model_not_found"}})
    code, out, err = run("--url", api.url, "chat", "demo", "hi", "--model", "nope", "--api-key", "k")
    assert code == 2 and out.strip() == "" and err.count("\n") == 1
    assert err.startswith("adapterctl: chat failed: The model 'nope' does not exist"), err


def test_refusals_of_the_orchestrator_are_bad_input_and_one_broken_app_keeps_the_list(
        run: Run, api: FakeApi, tmp_path: Path) -> None:
    """The orchestrator's 400/404 exit 2; `apps` shows an app it cannot describe as a row saying why; `.` is an
    app name like any other (escaped, not resolved away); --timeout works after the command; an adapter_config.json
    that is not an object is one line, exit 2."""
    api.routes["/api/apps/Demo/deployments"] = (400, {"error": {"message": "app name 'Demo' is invalid"}})
    code, _, err = run("--url", api.url, "status", "--app", "Demo")
    assert code == 2 and err == "adapterctl: app name 'Demo' is invalid\n", err
    api.routes["/api/apps"] = (200, {"apps": ["demo", "broken"]})
    api.routes["/api/apps/demo"] = (200, {"app": "demo", "served": {"version": "beta@a8d5"}, "endpoint": "http://x"})
    api.routes["/api/apps/broken"] = (503, {"error": {"message": "platform unavailable: state file unreadable"}})
    code, out, _ = run("--url", api.url, "apps")
    assert code == 0 and "demo" in out and "broken" in out and "state file unreadable" in out, out
    asked = len(api.requests)
    code, _, err = run("--url", api.url, "status", "--app", "..", "--timeout", "5")
    assert code == 2 and err == "adapterctl: '..' is not a valid name\n" and len(api.requests) == asked
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("[]")
    code, out, err = run("--url", api.url, "deploy", str(folder), "--app", "demo", "--storage-connection", "x")
    assert (code, out) == (2, "") and err.startswith("adapterctl: invalid adapter") and err.count("\n") == 1, err


def test_status_of_a_record_lists_the_replicas_the_gate_counted(run: Run, api: FakeApi) -> None:
    """A record with the gate's per-replica figures: one line per replica, counted or not and why."""
    rec = record("demo.20261130T141411000000-u1", "rolled_back", [*STAGES, "rolled_back"], reason="not every replica")
    rec["replicas"] = {"demo--1-0": {"counted": True, "alias_version": "beta@a8d5", "stale": False},
                       "demo--1-1": {"counted": False, "alias_version": "alpha@1111", "stale": True,
                                     "why": "stale report (heartbeat 40 s ago)"},
                       "demo--1-2": {"counted": False, "refused": "rank_too_large"}}
    api.routes[f"/api/deployments/{rec['id']}"] = (200, rec)
    code, out, _ = run("--url", api.url, "status", rec["id"])
    assert code == 0
    assert out.split("replicas:\n")[1].splitlines() == [
        "  demo--1-0  counted  beta@a8d5", "  demo--1-1  not counted  alpha@1111  (stale report (heartbeat 40 s ago))",
        "  demo--1-2  refused  -  (rank_too_large)"]
