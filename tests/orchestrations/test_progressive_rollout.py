"""Progressive delivery in the rollout orchestration, on devhost (the SDK's real replay) with stand-in activities:
the quality gate, approval and canary steps, a person's actions, and what the record keeps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import azure.durable_functions as df
import pytest

from activities.catalog import Activity
from activities.replica_reports import replica_verdict
from devhost.host import DevHost
from inference_image.inference_server.metrics import TTFT_MS_BOUNDS, p95_ms
from orchestrations.health_gate import bp as health_gate
from orchestrations.progressive import ACTION_EVENT
from orchestrations.rollout import bp as rollouts

SHA = "a" * 64
LIVE = "old@bbbbbbbbbbbb"
NEW = "new@" + SHA[:12]
TIMING = {"poll_interval_s": 0.05, "hot_swap_timeout_s": 0.5, "restart_timeout_s": 1.0, "verify_attempts": 2,
          "heal_interval_s": 60.0, "retry_base_s": 0.2}
PREVIOUS = {"adapters": {"old": {"path": "adapters/old/" + "b" * 64, "sha256": "b" * 64, "version": LIVE}},
            "active": "old", "alias": "live", "base_model": "tiny", "updated_at": None, "schema": 1,
            "candidate": None}
EVAL = {"min_score": 0.8, "max_tokens": 16,
        "cases": [{"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}}]}
LE = list(TTFT_MS_BOUNDS)


def histogram(samples: int, ms: float) -> dict[str, Any]:
    counts = [0] * (len(LE) + 1)
    counts[next((i for i, bound in enumerate(LE) if ms <= bound), len(LE))] = samples
    return {"le": LE, "counts": counts}


@dataclass
class World:
    """What the stand-in activities answer (one replica that follows the manifest), and what they saw."""

    manifest: dict[str, Any] | None = field(default_factory=lambda: dict(PREVIOUS))
    policy: dict[str, Any] | None = None
    eval_set: dict[str, Any] | None = None  # the adapter's own eval.json
    scores: dict[str, float] = field(default_factory=lambda: {NEW: 1.0, LIVE: 1.0})
    refuse_candidate: str | None = None
    #: per version, per hold: (requests, errors, time to first token in ms)
    traffic: dict[str, tuple[int, int, float]] = field(default_factory=lambda: {LIVE: (90, 0, 40.0), NEW: (10, 0, 40.0)})
    writes: list[dict[str, Any] | None] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    metric_reads: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)  # kept by the actions API, oldest first
    open_records: list[str] = field(default_factory=lambda: ["app.1"])  # ids of the app's open records, oldest first
    slow_probe_at: float | None = None  # the first probe of the manifest with this candidate weight takes 0.5 s
    #: activity name → calls that work before every later one raises as storage that went away does
    breaks_after: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        m = self.manifest or {}
        candidate = m.get("candidate")
        errors = ({"new": {"version": candidate["version"], "sha256": SHA, "reason": self.refuse_candidate}}
                  if candidate and self.refuse_candidate else {})
        active = m.get("active")
        return {"replica_id": "r0", "alias_version": m["adapters"][active]["version"] if active else None,
                "manifest_updated_at": m.get("updated_at"), "converged": True, "stale": False, "load_errors": errors}

    def metrics(self) -> dict[str, Any]:
        self.metric_reads += 1
        n = self.metric_reads
        return {"r0": {v: {"requests": r * n, "errors": e * n, "ttft_ms": histogram(r * n, ms)}
                       for v, (r, e, ms) in self.traffic.items()}}


def stand_in_app(w: World) -> df.DFApp:
    bp = df.Blueprint()

    def activity(name: Activity):
        def register(fn):
            def wrapped(payload: dict) -> Any:
                w.calls.append(str(name))
                if w.calls.count(str(name)) > w.breaks_after.get(str(name), 1 << 30):
                    raise OSError(f"storage unreachable (injected into {name})")
                return fn(payload)
            wrapped.__name__ = fn.__name__
            return bp.activity_trigger(input_name="payload", activity=name)(wrapped)
        return register

    @activity(Activity.VALIDATE_ADAPTER)
    def validate_adapter(payload: dict) -> dict:
        return {"ok": True, "sha256": SHA, "base_model": "tiny", "eval_set": w.eval_set}

    @activity(Activity.STAGE_ADAPTER)
    def stage_adapter(payload: dict) -> dict:
        return {"ok": True, "path": f"adapters/new/{SHA}",
                "report": {"sha256": SHA, "base_model": "tiny", "eval_set": w.eval_set}}

    @activity(Activity.ENSURE_APP)
    def ensure_app(payload: dict) -> dict:
        return {"ok": True, "changed": False}

    @activity(Activity.READ_POLICY)
    def read_policy(payload: dict) -> dict:
        return {"ok": True, "policy": w.policy, "source": "app" if w.policy else "none"}

    @activity(Activity.READ_MANIFEST)
    def read_manifest(payload: dict) -> dict | None:
        return w.manifest

    @activity(Activity.WRITE_MANIFEST)
    def write_manifest(payload: dict) -> dict:
        w.writes.append(payload["manifest"])
        w.manifest = payload["manifest"]
        return {"ok": True}

    @activity(Activity.RESTART_APP)
    def restart_app(payload: dict) -> dict:
        return {"ok": True}

    @activity(Activity.PROBE_ENDPOINT)
    def probe_endpoint(payload: dict) -> dict:
        if w.slow_probe_at is not None and ((w.manifest or {}).get("candidate") or {}).get("weight") == w.slow_probe_at:
            w.slow_probe_at = None
            time.sleep(0.5)
        report = w.report()
        answer = {"ready": True, "served_version": report["alias_version"], "reply": "hi", "error": None,
                  "refused": None, "bad_answer": False}
        check = payload.get("replicas")
        if check is not None:
            verdict = replica_verdict(["r0"], [report], payload["expect_version"], check["manifest_updated_at"],
                                      check.get("candidate")).to_dict()
            answer["replicas"] = verdict
            if verdict["state"] == "refused":
                answer["refused"] = verdict["why"]
        return answer

    @activity(Activity.EVALUATE_ADAPTER)
    def evaluate_adapter(payload: dict) -> dict:
        total = len(payload["eval_set"]["cases"]) * 20
        scores = {}
        for version in payload["versions"]:
            passed = round(w.scores[version] * total)
            scores[version] = {"score": passed / total, "passed": passed, "total": total,
                               "cases": [{"ok": i < passed, "why": None if i < passed else "no 'hello'"}
                                         for i in range(total)]}
        return {"ok": True, "scores": scores}

    @activity(Activity.READ_DECISIONS)
    def read_decisions(payload: dict) -> dict:
        return {"ok": True, "decisions": list(w.decisions)}

    @activity(Activity.INGEST_RECORDS)
    def ingest_records(payload: dict) -> list[dict]:
        return [{"id": rid} for rid in w.open_records]

    @activity(Activity.REPLICA_METRICS)
    def replica_metrics(payload: dict) -> dict:
        return {"ok": True, "metrics": w.metrics()}

    app = df.DFApp()
    for blueprint in (rollouts, health_gate, bp):
        app.register_functions(blueprint)
    return app


@dataclass
class Run:
    host: DevHost
    instance: str = "app.1"

    async def stage(self) -> str | None:
        record = self.host.store.get(self.instance)
        status = json.loads(record.custom_status_json) if record and record.custom_status_json else {}
        return status.get("stage")

    async def when(self, stage: str, timeout: float = 30.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if await self.stage() == stage:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"the rollout never reached {stage} (at {await self.stage()})")

    world: World | None = None

    def act(self, action: str, by: str | None = "ana") -> None:
        """What the actions API does: keep the decision, then wake the rollout (a `supersede` hint only wakes)."""
        if action != "supersede" and self.world is not None:
            self.world.decisions.append({"action": action, "by": by, "at": "2026-11-30T00:00:00+00:00"})
        self.host.worker.raise_event(self.instance, ACTION_EVENT, json.dumps({"action": action, "by": by}))

    async def outcome(self) -> dict[str, Any]:
        record = await self.host.worker.wait_for(self.instance, timeout=60)
        return json.loads(record.output_json)


@pytest.fixture
async def start(tmp_path) -> AsyncIterator[Any]:
    hosts: list[DevHost] = []

    async def run(world: World) -> Run:
        host = DevHost(stand_in_app(world), state_dir=tmp_path / f"state{len(hosts)}", port=0)
        hosts.append(host)
        await host.start()
        request = {"deployment_id": "app.1", "app": "app", "adapter": "new", "sha256": SHA, "force_restart": False,
                   "timing": TIMING, "baseline": None}
        host.worker.start_new("rollout", "app.1", json.dumps(request))
        return Run(host, world=world)

    yield run
    for host in hosts:
        await host.stop()


def stages(out: dict[str, Any]) -> list[str]:
    return [h["stage"] for h in out["history"]]


def weights(w: World) -> list[float | None]:
    """The candidate's weight in each manifest written (None: no candidate)."""
    return [(m.get("candidate") or {}).get("weight") if m else None for m in w.writes]


async def test_without_policy_or_eval_set_the_rollout_is_not_gated(start) -> None:
    w = World()
    out = await (await start(w)).outcome()
    assert out["stage"] == "live" and out["policy_source"] == "none"
    assert weights(w) == [None] and "evaluate_adapter" not in w.calls
    assert "evaluating" not in stages(out) and "canary" not in stages(out)


async def test_a_failing_evaluation_set_refuses_the_candidate_before_any_traffic_moves(start) -> None:
    w = World(eval_set=EVAL, scores={NEW: 0.25, LIVE: 1.0})
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back" and out["cause"] == "content"
    assert "quality gate: adapter evaluation set: scored 0.25, below its minimum 0.80" in out["reason"]
    assert all(m is None or m["active"] == "old" for m in w.writes)  # the alias never moved
    assert weights(w) == [0.0, None] and w.writes[-1] == PREVIOUS  # weight 0, then exactly the replaced manifest
    evaluation = out["evaluation"]
    assert evaluation["passed"] is False
    assert evaluation["sets"]["adapter"]["candidate"]["score"] == 0.25
    assert evaluation["sets"]["adapter"]["live"]["score"] == 1.0
    assert len(evaluation["sets"]["adapter"]["candidate"]["failing"]) == 10  # capped


async def test_a_regression_beyond_the_margin_is_refused_and_within_it_goes_live(start) -> None:
    policy = {"quality": {"max_regression": 0.1, "eval": {**EVAL, "min_score": 0.5}}}
    w = World(policy=policy, scores={NEW: 0.8, LIVE: 1.0})
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back"
    assert "app evaluation set: scored 0.80 against live's 1.00 (the policy allows 0.10 less)" in out["reason"]

    w = World(policy=policy, eval_set=EVAL, scores={NEW: 0.9, LIVE: 1.0})
    out = await (await start(w)).outcome()
    assert out["stage"] == "live", out["reason"]
    assert set(out["evaluation"]["sets"]) == {"adapter", "app"} and out["evaluation"]["passed"] is True
    assert stages(out)[-4:] == ["evaluating", "activating", "verifying", "live"]
    assert w.manifest["active"] == "new" and w.manifest.get("candidate") is None


async def test_a_replica_refusing_the_candidate_rolls_back_at_weight_zero(start) -> None:
    w = World(eval_set=EVAL, refuse_candidate="rank 64 > max_lora_rank 16")
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back" and out["cause"] == "content"
    assert "refused the adapter: rank 64 > max_lora_rank 16" in out["reason"]
    assert "evaluate_adapter" not in w.calls and w.writes[-1] == PREVIOUS


@pytest.mark.parametrize(("action", "stage", "reason"), [
    ("approve", "live", None), ("reject", "rolled_back", "rejected by ana"), ("abort", "rolled_back", "rejected by ana"),
])
async def test_approval_decides(start, action: str, stage: str, reason: str | None) -> None:
    w = World(policy={"approval": {"required": True, "timeout_s": 60}})
    run = await start(w)
    await run.when("awaiting_approval")
    run.act("promote")  # not an action this stage takes: ignored
    await asyncio.sleep(0.2)
    assert await run.stage() == "awaiting_approval"
    run.act(action)
    out = await run.outcome()
    assert out["stage"] == stage and (reason is None or out["reason"] == reason)
    assert out["approval"]["decision"] == ("approved" if action == "approve" else "rejected")
    assert out["approval"]["by"] == "ana"


async def test_no_approval_before_the_deadline_rolls_back(start) -> None:
    w = World(policy={"approval": {"required": True, "timeout_s": 1}})
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back" and "no approval before the deadline" in out["reason"]
    assert out["approval"]["decision"] == "expired" and w.writes[-1] == PREVIOUS


CANARY = {"canary": {"steps": [10, 50, 100], "hold_s": 0.3}}


async def test_a_good_canary_walks_the_steps_and_goes_live(start) -> None:
    w = World(policy=CANARY)
    out = await (await start(w)).outcome()
    assert out["stage"] == "live", out["reason"]
    assert weights(w) == [0.0, 0.1, 0.5, None] and w.manifest["active"] == "new"
    analysis = out["canary"]["analysis"]
    assert [(a["weight"], a["verdict"]) for a in analysis] == [(10, "pass"), (50, "pass")]
    assert analysis[0]["figures"][NEW] == {"requests": 10, "errors": 0, "error_rate": 0.0,
                                           "ttft_p95_ms": p95_ms(LE, histogram(10, 40.0)["counts"])}
    assert analysis[0]["figures"][LIVE]["requests"] == 90


SLOW, FAST = p95_ms(LE, histogram(1, 900.0)["counts"]), p95_ms(LE, histogram(1, 40.0)["counts"])


@pytest.mark.parametrize(("traffic", "why"), [
    ((10, 3, 40.0), "error rate 30.0% is above the policy's 5.0%"),
    ((10, 0, 900.0), f"time to first token p95 {SLOW:g} ms is {SLOW / FAST:.2f}× live's {FAST:g} ms "
                     "(the policy allows 1.5×)"),
])
async def test_a_bad_canary_is_rolled_back_within_one_step(start, traffic: tuple, why: str) -> None:
    w = World(policy=CANARY)
    w.traffic[NEW] = traffic
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back" and out["cause"] == "content"
    assert out["reason"] == f"canary at 10 %: {why}"
    assert weights(w) == [0.0, 0.1, None] and w.writes[-1] == PREVIOUS
    assert [a["verdict"] for a in out["canary"]["analysis"]] == ["fail"]


async def test_too_little_traffic_fails_a_step_when_the_policy_asks_for_some(start) -> None:
    w = World(policy={"canary": {"steps": [10, 100], "hold_s": 0.2, "min_requests": 50}})
    out = await (await start(w)).outcome()
    assert out["stage"] == "rolled_back" and "not enough traffic to judge: 10 candidate requests" in out["reason"]


@pytest.mark.parametrize(("action", "stage"), [("promote", "live"), ("abort", "rolled_back")])
async def test_promote_or_abort_during_a_hold(start, action: str, stage: str) -> None:
    w = World(policy={"canary": {"steps": [10, 50, 100], "hold_s": 30}})
    run = await start(w)
    await run.when("canary")
    run.act(action)
    out = await run.outcome()
    assert out["stage"] == stage
    assert [a["verdict"] for a in out["canary"]["analysis"]] == [action]
    assert weights(w)[:2] == [0.0, 0.1] and 0.5 not in weights(w)
    if action == "abort":
        assert out["reason"] == "aborted at 10 % by ana" and w.writes[-1] == PREVIOUS


@pytest.mark.parametrize(("policy", "activity", "works"), [
    ({"canary": {"steps": [10, 100], "hold_s": 0.2}}, "replica_metrics", 1),  # the hold's closing read fails
    ({"approval": {"required": True, "timeout_s": 60}}, "read_decisions", 0),  # the approval wait cannot read
])
async def test_storage_failing_in_a_hold_or_an_approval_wait_restores_the_replaced_manifest(
    start, policy: dict, activity: str, works: int
) -> None:
    """Storage that stops answering while the rollout waits: the retries run out and the rollout ends
    `rolled_back`, the reason naming the failure, with exactly the replaced manifest written back."""
    w = World(policy=policy, breaks_after={activity: works})
    run = await start(w)
    if activity == "read_decisions":
        await run.when("awaiting_approval")
        run.act("approve")  # the decision is kept, but the rollout cannot read it
    out = await run.outcome()
    assert out["stage"] == "rolled_back" and out["cause"] == "transient", out
    assert out["reason"].startswith(f"{activity}: ") and "storage unreachable" in out["reason"], out["reason"]
    assert w.writes[-1] == PREVIOUS and w.manifest == PREVIOUS
    assert w.calls.count(activity) > works + 1  # retried before giving up


async def test_the_first_version_of_an_app_skips_the_canary(start) -> None:
    w = World(manifest=None, policy=CANARY)
    out = await (await start(w)).outcome()
    assert out["stage"] == "live" and "skipped" in out["canary"]
    assert weights(w) == [0.0, None] and w.manifest["active"] == "new"


async def test_a_decision_sent_while_the_weight_moves_is_taken_by_the_next_hold(start) -> None:
    """`promote` sent between the first hold's end and the next hold (the stage is still canary) is not lost."""
    w = World(policy={"canary": {"steps": [10, 50, 100], "hold_s": 0.5}}, slow_probe_at=0.5)
    run = await start(w)
    await run.when("canary")
    for _ in range(500):  # the first hold is over once the second manifest (50 %) is written
        if 0.5 in weights(w):
            break
        await asyncio.sleep(0.01)
    run.act("promote")
    out = await run.outcome()
    assert out["stage"] == "live"
    assert [a["verdict"] for a in out["canary"]["analysis"]] == ["pass", "promote"]


@pytest.mark.parametrize("stage", ["canary", "awaiting_approval"])
async def test_a_newer_deployment_ends_a_waiting_rollout_superseded(start, stage: str) -> None:
    """`supersede` (from the starters) while the rollout waits: a newer open record ends it superseded and rolled
    back; the same hint without a newer record (stale) is ignored and the wait goes on."""
    policy = ({"canary": {"steps": [10, 100], "hold_s": 60}} if stage == "canary"
              else {"approval": {"required": True, "timeout_s": 60}})
    w = World(policy=policy)
    run = await start(w)
    await run.when(stage)
    run.act("supersede", by="upload beta")  # stale: this rollout's record is the newest open one
    await asyncio.sleep(0.3)
    assert await run.stage() == stage and "ingest_records" in w.calls
    w.open_records.append("app.2")
    run.act("supersede", by="upload beta")
    out = await run.outcome()
    assert out["stage"] == "rolled_back" and out["cause"] == "superseded"
    assert out["reason"] == f"superseded by app.2 while {stage}" and w.writes[-1] == PREVIOUS
