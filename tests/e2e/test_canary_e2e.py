"""Progressive delivery end to end on the embedded default with 3 local replicas (tests/e2e/conftest.py's
`replicas_stack`, shared with test_local_replicas_e2e.py): policies set through `PUT /api/apps/{app}/policy`.

App `split` (alpha live, then):
- canary at 10 %: 1,000 chats from 100 callers (`user`) through the front: the candidate serves 10 % ± 3 % of the
  callers, each caller always gets one version, every replica serves both versions, and each replica asked directly
  gives every caller the version the front gave; `abort` ends it `rolled_back` and every replica serves alpha;
- quality gate: an evaluation set beta fails refuses it before any traffic (alpha still served); one it passes (and
  alpha fails) lets it go live with the scores in the record; approval: `adapterctl approve ID` → live.
App `steps` (every replica fails beta's generations, `INFERENCE_FAULT_FAIL_CHAT`, and answers adapter `slow` 3 s
late, `INFERENCE_FAULT_SLOW_CHAT`):
- a failing candidate is rolled back at its first step (`canary at 50 %: error rate …`), alpha served;
- a candidate slower than the policy allows is rolled back at its first step (`… time to first token p95 …`);
- a good candidate (new content of alpha) passes the 50 % step with figures for both versions and goes live.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from adapterctl.follow import follow
from adapterctl.progressive import send_action
from tests.e2e.helpers import TIMEOUT, deploy, listed, served_version, variant, wait_idle, wait_until

pytestmark = pytest.mark.slow

CALLERS = [f"caller-{i}" for i in range(100)]
PROMPT = [{"role": "user", "content": "Hello there!"}]
# timing on a shared 2-core runner is not what these tests judge: only errors fail a step here
LENIENT_TTFT = {"max_ttft_p95_ratio": 1000}


def eval_set(expect: str) -> dict[str, Any]:
    return {"min_score": 1, "max_tokens": 24, "cases": [{"messages": PROMPT, "expect": {"contains": expect}}]}


def set_policy(stack: Any, app: str, policy: dict[str, Any]) -> None:
    answer = requests.put(f"{stack.url}/api/apps/{app}/policy", json=policy, timeout=10)
    assert answer.status_code == 200 and answer.json()["source"] == "app", answer.text
    wait_idle(stack, app)


_sessions = threading.local()


def ask(url: str, key: str, user: str) -> tuple[int, str | None]:
    """One non-streaming alias chat as `user` at `url` (the front or one replica): status and serving version (one
    keep-alive session per thread)."""
    if not hasattr(_sessions, "session"):
        _sessions.session = requests.Session()
    answer = _sessions.session.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"model": "live", "messages": PROMPT, "max_tokens": 1, "temperature": 0,
                                 "user": user})
    return answer.status_code, answer.headers.get("X-Adapter-Version")


def wait_stage(stack: Any, deployment_id: str, stage: str, done=lambda record: True) -> dict[str, Any]:
    """The record once it is in `stage` and `done(record)`; fails when the rollout ends first."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        record = stack.api.deployment(deployment_id)
        if record["stage"] == stage and done(record):
            return record
        assert record["stage"] not in ("live", "rolled_back", "failed"), record.get("reason")
        assert time.monotonic() < deadline, f"{deployment_id} never reached {stage}: {record['stage']}"
        time.sleep(0.1)


def replica_requests(stack: Any, app: str) -> dict[str, Counter]:
    """Each replica's cumulative chat count by served version (its report's `metrics`)."""
    return {r["replica_id"]: Counter({v: m["requests"] for v, m in (r.get("metrics") or {}).items()})
            for r in stack.api.app(app)["replicas_observed"]}


def no_candidate(stack: Any, app: str, replicas: dict[str, Any]) -> bool:
    """Every one of `replicas` reports no candidate taking traffic (none, or one at weight 0)."""
    reports = {r["replica_id"]: r for r in stack.api.app(app)["replicas_observed"]}
    return all(name in reports and not (reports[name].get("candidate") or {}).get("weight") for name in replicas)


@contextmanager
def traffic(stack: Any, app: str) -> Iterator[Counter]:
    """Alias chats from the callers in turn through the front, two at a time, until the block ends; yields the
    statuses by version as they come."""
    endpoint, seen, stop = stack.api.app(app)["endpoint"], Counter(), threading.Event()

    def run(offset: int) -> None:
        for i in range(offset, 10**9, 2):
            if stop.is_set():
                return
            status, version = ask(endpoint, stack.api_key, CALLERS[i % len(CALLERS)])
            seen[(version, status)] += 1

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


@pytest.fixture(scope="module")
def kit_variants(replicas_stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Distinct contents of the kit's adapters: `make(name, n)` → a copy of `name` with config revision n."""
    root = tmp_path_factory.mktemp("variants")

    def make(name: str, n: int) -> Path:
        dest = root / f"{name}-{n}" / name
        return dest if dest.exists() else variant(replicas_stack.kit.adapters[name], dest, revision=n)

    yield make


@pytest.fixture(scope="class")
def split_app(replicas_stack) -> Iterator[str]:
    """App `split` with alpha live; stopped after its class (its servers would slow the next app's start)."""
    first = deploy(replicas_stack, "split", replicas_stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    yield "split"
    replicas_stack.platform.stop_app("split")


@pytest.fixture(scope="class")
def steps_app(replicas_stack) -> Iterator[str]:
    """App `steps` (beta's generations fail on every replica) with alpha live; stopped after its class."""
    first = deploy(replicas_stack, "steps", replicas_stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    yield "steps"
    replicas_stack.platform.stop_app("steps")


def live_version(stack: Any, app: str) -> str:
    return stack.api.app(app)["served"]["version"]


class TestSplitApp:
    """App `split`: the 10 % canary split and abort, then the quality gate and approval."""

    def test_canary_at_10_percent_splits_callers_alike_on_every_replica_and_abort_rolls_back(
        self, replicas_stack, split_app: str, kit_variants
    ) -> None:
        stack, app = replicas_stack, split_app
        alpha = live_version(stack, app)
        set_policy(stack, app, {"canary": {"steps": [10, 100], "hold_s": 600}})
        uploaded = stack.store.upload_adapter_folder(kit_variants("beta", 1), app, "beta")
        record = wait_stage(stack, uploaded.deployment_id, "canary",
                            lambda r: (r.get("canary") or {}).get("weight") == 10 and r["canary"].get("hold_until"))
        beta = record["version"]
        before = replica_requests(stack, app)

        endpoint = stack.api.app(app)["endpoint"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: (CALLERS[i % 100], *ask(endpoint, stack.api_key, CALLERS[i % 100])),
                                    range(1000)))
        assert all(status == 200 for _, status, _ in answers), Counter(status for _, status, _ in answers)
        by_caller: dict[str, set[str | None]] = defaultdict(set)
        for user, _, version in answers:
            by_caller[user].add(version)
        assert all(len(versions) == 1 for versions in by_caller.values()), by_caller  # sticky
        assignment = {user: versions.pop() for user, versions in by_caller.items()}
        assert set(assignment.values()) == {alpha, beta}, assignment
        on_beta = sum(version == beta for version in assignment.values())
        assert 7 <= on_beta <= 13, f"{on_beta} of 100 callers on the candidate"

        ports = {name: info["port"] for name, info in listed(stack, app).items()}

        def served() -> dict[str, Counter]:  # per replica since `before`, once the reports have caught up
            after = replica_requests(stack, app)
            return {name: after[name] - before.get(name, Counter()) for name in after}

        wait_until(lambda: sum(sum(c.values()) for c in served().values()) >= 1000)

        counts = served()
        assert sorted(counts) == sorted(ports), (counts, ports)
        assert all(c[alpha] and c[beta] for c in counts.values()), counts  # every replica served both versions
        beta_callers = [user for user, version in assignment.items() if version == beta]
        sample = beta_callers + [user for user in CALLERS if assignment[user] == alpha][:10]
        for name, port in ports.items():  # each replica asked directly gives them the version the front gave
            direct = {user: ask(f"http://127.0.0.1:{port}", stack.api_key, user)[1] for user in sample}
            assert direct == {user: assignment[user] for user in sample}, name

        send_action(stack.api, uploaded.deployment_id, "abort", "e2e")
        record = follow(stack.api, uploaded.deployment_id, TIMEOUT, lambda _: None, interval=0.1)
        assert record["stage"] == "rolled_back" and record["reason"].startswith("aborted at 10 %"), record.get("reason")
        assert record["canary"]["analysis"][-1]["verdict"] == "abort"
        wait_until(lambda: no_candidate(stack, app, ports))  # the replicas have read the restored manifest
        assert {served_version(stack, port) for port in ports.values()} == {alpha}
        for port in ports.values():
            assert {ask(f"http://127.0.0.1:{port}", stack.api_key, user)[1] for user in beta_callers} == {alpha}


    def test_quality_gate_refuses_before_traffic_or_lets_through_and_approval_then_live(
        self, replicas_stack, split_app: str, kit_variants
    ) -> None:
        stack, app = replicas_stack, split_app
        alpha = live_version(stack, app)

        set_policy(stack, app, {"quality": {"eval": eval_set("hello")}})  # alpha passes, beta does not
        refused = deploy(stack, app, kit_variants("beta", 2), "beta")
        assert refused["stage"] == "rolled_back" and refused["reason"].startswith("quality gate: "), refused.get("reason")
        scores = refused["evaluation"]["sets"]["app"]
        assert (scores["candidate"]["score"], scores["live"]["score"]) == (0.0, 1.0), scores
        assert refused["evaluation"]["passed"] is False and not refused.get("canary"), refused
        assert live_version(stack, app) == alpha
        assert {served_version(stack, info["port"]) for info in listed(stack, app).values()} == {alpha}

        set_policy(stack, app, {"quality": {"eval": eval_set("goodbye"), "max_regression": 0}})  # beta beats alpha
        passed = deploy(stack, app, kit_variants("beta", 3), "beta")
        assert passed["stage"] == "live", passed.get("reason")
        scores = passed["evaluation"]["sets"]["app"]
        assert (scores["candidate"]["score"], scores["live"]["score"]) == (1.0, 0.0), scores
        assert passed["evaluation"]["passed"] is True and live_version(stack, app) == passed["version"]

        set_policy(stack, app, {"approval": {"required": True, "timeout_s": 300}})
        uploaded = stack.store.upload_adapter_folder(kit_variants("alpha", 4), app, "alpha")
        waiting = wait_stage(stack, uploaded.deployment_id, "awaiting_approval", lambda r: r.get("approval"))
        assert waiting["approval"]["decision"] is None and live_version(stack, app) == passed["version"]
        approve = subprocess.run([sys.executable, "-m", "adapterctl", "--url", stack.url, "approve",
                                  uploaded.deployment_id, "--by", "e2e", "--timeout", str(TIMEOUT)],
                                 capture_output=True, text=True, timeout=TIMEOUT + 30, env=stack.env)
        assert approve.returncode == 0, approve.stdout + approve.stderr
        record = stack.api.deployment(uploaded.deployment_id)
        assert record["stage"] == "live" and record["approval"]["decision"] == "approved", record
        assert record["approval"]["by"] == "e2e" and live_version(stack, app) == record["version"]


class TestStepsApp:
    """App `steps`: a failing candidate and a slow one rolled back at their first step, then a good one promoted."""

    def test_a_failing_or_slow_candidate_is_rolled_back_at_its_first_step_and_a_good_one_reaches_100(
        self, replicas_stack, steps_app: str, kit_variants
    ) -> None:
        stack, app = replicas_stack, steps_app
        alpha = live_version(stack, app)

        set_policy(stack, app, {"canary": {"steps": [50, 100], "hold_s": 5, **LENIENT_TTFT}})
        with traffic(stack, app) as seen:
            failing = deploy(stack, app, kit_variants("beta", 5), "beta")
        assert failing["stage"] == "rolled_back", failing.get("reason")
        assert failing["reason"].startswith("canary at 50 %: error rate "), failing["reason"]
        (step,) = failing["canary"]["analysis"]
        assert step["verdict"] == "fail" and step["figures"][failing["version"]]["errors"] > 0, step
        assert sum(n for (_, status), n in seen.items() if status >= 500) and seen[(alpha, 200)], seen
        assert live_version(stack, app) == alpha
        assert {served_version(stack, info["port"]) for info in listed(stack, app).values()} == {alpha}

        set_policy(stack, app, {"canary": {"steps": [50, 100], "hold_s": 5, "max_ttft_p95_ms": 1500, **LENIENT_TTFT}})
        with traffic(stack, app) as seen:
            slow = deploy(stack, app, kit_variants("alpha", 7), "slow")
        assert slow["stage"] == "rolled_back", slow.get("reason")
        assert slow["reason"].startswith("canary at 50 %: time to first token p95 "), slow["reason"]
        (step,) = slow["canary"]["analysis"]
        figures = step["figures"][slow["version"]]
        assert step["verdict"] == "fail" and figures["ttft_p95_ms"] >= 3000 and figures["errors"] == 0, step
        assert live_version(stack, app) == alpha and not any(status != 200 for _, status in seen), seen
        assert {served_version(stack, info["port"]) for info in listed(stack, app).values()} == {alpha}

        set_policy(stack, app, {"canary": {"steps": [50, 100], "hold_s": 3, **LENIENT_TTFT}})
        with traffic(stack, app) as seen:
            good = deploy(stack, app, kit_variants("alpha", 6), "alpha")
        assert good["stage"] == "live", good.get("reason")
        (step,) = good["canary"]["analysis"]
        assert step["step"] == 1 and step["weight"] == 50 and step["verdict"] == "pass", step
        figures = step["figures"]
        assert sorted(figures) == sorted([alpha, good["version"]]), figures
        assert all(f["requests"] > 0 and f["errors"] == 0 for f in figures.values()), figures
        assert live_version(stack, app) == good["version"] and not any(status != 200 for _, status in seen), seen
