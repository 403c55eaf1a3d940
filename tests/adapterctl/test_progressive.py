"""adapterctl's progressive delivery commands (adapterctl/progressive.py) against the fake orchestrator: each
decision POSTs its route with `by` (from --by, else $USER), then follows the record, or with --no-wait prints the
answer; a 409 exits 2 with the server's message; `policy show|set|clear` use GET / PUT / DELETE and a bad file or a
policy the server refuses exits 2; `status ID` prints the quality gate, approval and canary lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adapterctl.conftest import Run
from tests.adapterctl.fake_api import FakeApi, record

ID = "demo.20261130T141411000000-u1"
GATED = ["received", "validating", "staging", "provisioning", "activating", "evaluating"]
POLICY = {"canary": {"steps": [10, 100], "hold_s": 30}, "approval": {"required": True}}


def _accept(api: FakeApi, action: str, stage: str) -> None:
    api.routes[f"POST /api/deployments/{ID}/{action}"] = (202, {"id": ID, "action": action, "stage": stage,
                                                                "by": None})


@pytest.mark.parametrize(("action", "stage", "ends"), [("approve", "awaiting_approval", "live"),
                                                       ("reject", "awaiting_approval", "rolled_back"),
                                                       ("promote", "canary", "live"),
                                                       ("abort", "canary", "rolled_back")])
def test_each_decision_posts_its_route_with_by_and_follows_the_record(
        run: Run, api: FakeApi, monkeypatch: pytest.MonkeyPatch, action: str, stage: str, ends: str) -> None:
    monkeypatch.setenv("USER", "ana")
    _accept(api, action, stage)
    api.deployments[ID] = [record(ID, stage, [*GATED, stage]), record(ID, ends, [*GATED, stage, ends])]
    code, out, err = run("--url", api.url, action, ID, "--by", "bo")
    assert api.bodies == [("POST", f"/api/deployments/{ID}/{action}", {"by": "bo"})]  # --by wins over $USER
    assert out.splitlines()[0] == f"{action} sent to {ID} (was {stage})"
    assert out.splitlines()[-1] == f"{ID}: {ends}"
    assert code == (0 if ends == "live" else 1) and err == ""


def test_by_defaults_to_user_and_no_wait_prints_the_answer(run: Run, api: FakeApi,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "ana")
    _accept(api, "abort", "canary")
    code, out, _ = run("--url", api.url, "abort", ID, "--no-wait")
    assert code == 0 and out == f"abort sent to {ID} (was canary)\n"
    assert api.bodies == [("POST", f"/api/deployments/{ID}/abort", {"by": "ana"})]
    assert not any(path == f"/api/deployments/{ID}" for _, path, _ in api.requests)  # not followed

    monkeypatch.delenv("USER")  # no name at all: an empty body, the record keeps no "by"
    code, out, _ = run("--json", "--url", api.url, "abort", ID, "--no-wait")
    assert code == 0 and json.loads(out) == {"id": ID, "action": "abort", "stage": "canary", "by": None}
    assert api.bodies[-1] == ("POST", f"/api/deployments/{ID}/abort", {})


def test_a_409_exits_2_with_the_servers_message(run: Run, api: FakeApi) -> None:
    message = f"deployment {ID} is verifying: it takes no action"
    api.routes[f"POST /api/deployments/{ID}/promote"] = (
        409, {"error": {"message": message, "status": 409}, "stage": "verifying", "accepts": []})
    code, out, err = run("--url", api.url, "promote", ID, "--by", "bo")
    assert (code, out, err) == (2, "", f"adapterctl: {message}\n")
    code, _, err = run("--url", api.url, "approve", "..")  # not even sent
    assert code == 2 and "not a valid name" in err and len(api.bodies) == 1


def test_policy_show_set_clear(run: Run, api: FakeApi, tmp_path: Path) -> None:
    path = "/api/apps/demo/policy"
    api.routes[f"GET {path}"] = (200, {"app": "demo", "policy": None, "effective": None, "source": "none"})
    code, out, _ = run("--url", api.url, "policy", "show", "demo")
    assert code == 0 and out == "demo: rollouts follow none: rollouts go straight to all traffic after the smoke chat\n"

    api.routes[f"PUT {path}"] = (200, {"app": "demo", "policy": POLICY, "effective": POLICY, "source": "app"})
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(POLICY), encoding="utf-8")
    code, out, _ = run("--url", api.url, "policy", "set", "demo", str(file))
    assert code == 0 and api.bodies[-1] == ("PUT", path, POLICY)
    assert out.splitlines()[0] == "demo: rollouts follow the app's own policy"
    assert json.loads(out.split("\n", 1)[1]) == POLICY

    setting = {"canary": {"steps": [50, 100]}}
    api.routes[f"DELETE {path}"] = (200, {"app": "demo", "policy": None, "effective": setting, "source": "setting"})
    code, out, _ = run("--url", api.url, "policy", "clear", "demo")
    assert code == 0 and api.requests[-1][:2] == ("DELETE", path)
    assert out.splitlines()[0].endswith("the ROLLOUT_POLICY setting (the app has none of its own)")
    assert json.loads(out.split("\n", 1)[1]) == setting


def test_policy_set_with_a_bad_file_or_a_refused_policy_exits_2(run: Run, api: FakeApi, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    for file in (bad, tmp_path / "missing.json"):
        code, out, err = run("--url", api.url, "policy", "set", "demo", str(file))
        assert code == 2 and out == "" and err.startswith(f"adapterctl: policy file {str(file)!r}: ")
    assert api.requests == []  # nothing was sent

    api.routes["PUT /api/apps/demo/policy"] = (400, {"error": {"message": "policy.canary.steps: must rise to 100"}})
    bad.write_text(json.dumps({"canary": {"steps": [50]}}), encoding="utf-8")
    code, _, err = run("--url", api.url, "policy", "set", "demo", str(bad))
    assert code == 2 and err == "adapterctl: policy.canary.steps: must rise to 100\n"
    api.routes["GET /api/apps/nope/policy"] = (404, {"error": {"message": "no app 'nope'"}})
    code, _, err = run("--url", api.url, "policy", "show", "nope")
    assert code == 2 and err == "adapterctl: no app 'nope'\n"


def test_status_prints_the_gate_approval_and_canary(run: Run, api: FakeApi) -> None:
    live, beta = "alpha@0123456789ab", "beta@abcdef012345"
    evaluation = {"max_regression": 0.0, "passed": True, "sets": {
        "adapter": {"min_score": 0.8, "candidate": {"score": 1.0, "passed": 4, "total": 4, "failing": []},
                    "live": {"score": 0.75, "passed": 3, "total": 4, "failing": [{"case": 2, "why": "no"}]}},
        "app": {"min_score": 0.5, "candidate": {"score": 0.5, "passed": 1, "total": 2, "failing": []}, "live": None}}}
    canary = {"steps": [10, 50, 100], "step": 2, "weight": 50, "hold_until": "2026-11-30T14:20:00+00:00",
              "analysis": [{"step": 1, "weight": 10, "verdict": "pass", "figures": {
                  live: {"requests": 90, "errors": 1, "error_rate": 1 / 90, "ttft_p95_ms": 120.0},
                  beta: {"requests": 10, "errors": 0, "error_rate": 0.0, "ttft_p95_ms": None}}}]}
    approval = {"required": True, "deadline": "2026-12-01T14:14:20+00:00", "decision": "approved", "by": "ana",
                "at": "2026-11-30T14:15:00+00:00"}
    rec = record(ID, "canary", [*GATED, "awaiting_approval", "canary"], evaluation=evaluation, approval=approval,
                 canary=canary)
    api.routes[f"/api/deployments/{ID}"] = (200, rec)
    code, out, _ = run("--url", api.url, "status", ID)
    assert code == 0
    tail = out.split("quality gate:", 1)[1].splitlines()
    assert ["quality gate:" + tail[0], *tail[1:]] == [
        "quality gate: passed",
        "  adapter set: candidate 1.00 (4/4), live 0.75, minimum 0.80",
        "  app set: candidate 0.50 (1/2), minimum 0.50",
        "approval: approved by ana",
        "canary: 10 % → 50 % → 100 %; now 50 % until 2026-11-30 14:20:00 UTC",
        "  10 %: pass",
        f"    {live}  90 requests, errors 1.1%, ttft p95 120.0 ms",
        f"    {beta}  10 requests, errors 0.0%, ttft p95 - ms"]

    waiting = record(ID, "awaiting_approval", [*GATED, "awaiting_approval"],
                     approval={**approval, "decision": None, "by": None}, canary={"skipped": "no canary in the policy"})
    api.routes[f"/api/deployments/{ID}"] = (200, waiting)
    _, out, _ = run("--url", api.url, "status", ID)
    assert "approval: waiting until 2026-12-01 14:14:20 UTC" in out.splitlines()
    assert "canary: skipped (no canary in the policy)" in out.splitlines()
    assert "quality gate" not in out

    running = {"max_regression": 0.0, "passed": None, "sets": {"adapter": {"min_score": None, "candidate": {
        "score": None}, "live": None}}}  # figures not in yet: shown as "-", never a crash
    api.routes[f"/api/deployments/{ID}"] = (200, record(ID, "evaluating", GATED, evaluation=running))
    code, out, _ = run("--url", api.url, "status", ID)
    assert code == 0 and out.splitlines()[-2:] == ["quality gate: running",
                                                   "  adapter set: candidate - (-/-), minimum -"]
