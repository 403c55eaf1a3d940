"""Progressive delivery inside a rollout: the quality gate, approval and canary steps, before promotion.

Runs when the app's rollout policy asks for a canary or an approval, or an evaluation set exists (the adapter's
`eval.json`, the policy's `quality.eval`). The manifest keeps the live version active and carries the new one as
its `candidate`:

1. weight 0: every replica loads the candidate (no caller reaches it; it answers requests naming its version);
2. `evaluating`: each evaluation set is asked of the candidate and of the live version, by version name; the
   candidate is refused below the set's `min_score`, or more than the policy's `max_regression` below live;
3. `awaiting_approval` (policy `approval.required`): `approve`, or `reject` / `abort` / the deadline (the end);
4. `canary`: for each step below 100 %, that share of the alias's callers goes to the candidate for `hold_s`, then
   the hold's figures (error rate and time-to-first-token p95 by version, from the replicas' own metrics) are
   judged against live (`canary_analysis`); a failing step ends the rollout (rolled back to the manifest it
   replaced, weight 0 with it). `promote` skips the remaining steps; `abort` ends the rollout.

While it waits (approval, a canary hold), a newer deployment accepted for the app ends it `superseded` (rolled
back), so a long hold never keeps the newest upload waiting (`supersede`, sent by the starters, checked here).

Then the rollout promotes (the candidate becomes the active adapter) and verifies as without a policy. Every
failure here is the candidate's (cause `content`: the reconciler does not retry it) except a replica or the
endpoint failing to show the manifest in time (`transient`). No I/O here.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from activities.catalog import Activity
from activities.rollout_policy import RolloutPolicy
from inference_image.inference_server.manifest import AdapterEntry, CandidateEntry, Manifest

from .canary_analysis import EPSILON, hold_figures, judge
from .health_gate import replicas_agree, serves
from .manifest_plan import with_candidate
from .rollout_status import Cause, RolloutFailed, Stage

if TYPE_CHECKING:
    from .rollout import _Rollout

#: The external event a person's decision arrives as: `{"action": one of ACTIONS, "by": str | None}`.
ACTION_EVENT = "rollout_action"
#: Sent by the starters when a newer deployment is accepted while a rollout waits in one of these stages.
SUPERSEDE = "supersede"
#: Which actions a rollout takes in which stage (the actions API refuses the others with 409).
ACTIONS_BY_STAGE: dict[str, tuple[str, ...]] = {
    Stage.AWAITING_APPROVAL: ("approve", "reject", "abort"),
    Stage.CANARY: ("promote", "abort"),
}
#: Of an evaluation's per-case results, how many failing cases the record keeps.
MAX_CASES_SHOWN = 10


def eval_sets(policy: RolloutPolicy | None, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluation sets a rollout runs, by where they come from (`adapter`, `app`)."""
    sets = {"adapter": report.get("eval_set"), "app": policy.quality.eval if policy else None}
    return {name: s for name, s in sets.items() if s}


def is_gated(policy: RolloutPolicy | None, sets: dict[str, Any]) -> bool:
    return bool(sets) or (policy is not None and (policy.canary is not None or policy.approval.required))


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    failing = [{"case": i, **{k: c.get(k) for k in ("why", "reply")}}
               for i, c in enumerate(result.get("cases") or []) if not c.get("ok")]
    return {"score": result.get("score"), "passed": result.get("passed"), "total": result.get("total"),
            "failing": failing[:MAX_CASES_SHOWN]}


class Progressive:
    """The gated part of one rollout (`_Rollout.run` calls `run`, then promotes)."""

    def __init__(self, rollout: _Rollout, policy: RolloutPolicy | None, sets: dict[str, dict[str, Any]],
                 previous: Manifest | None, entry: AdapterEntry, base_model: str | None) -> None:
        self.ro = rollout
        self.policy = policy or RolloutPolicy()
        self.sets = sets
        self.previous = previous
        self.entry = entry
        self.base_model = base_model
        self.live = previous.active_version if previous is not None else None
        self.pending_event: Any = None  # the open wait for a wake-up (`next_action`)
        self.decisions_seen = 0  # decisions already read (`read_decisions` lists them oldest first)

    @property
    def ctx(self) -> Any:
        return self.ro.ctx

    def publish(self) -> None:
        self.ctx.set_custom_status(self.ro.status.to_dict())

    def run(self) -> Generator[Any, Any, None]:
        yield from self.set_weight(0.0)
        if self.sets:
            self.ro.enter(Stage.EVALUATING)
            yield from self.evaluate()
        if self.policy.approval.required:
            self.ro.enter(Stage.AWAITING_APPROVAL)
            yield from self.await_approval()
        if self.policy.canary is not None:
            if self.live is None:
                self.ro.status.canary = {"skipped": "no live version to compare with: the first version goes live"}
            else:
                self.ro.enter(Stage.CANARY)
                yield from self.canary()

    def set_weight(self, weight: float) -> Generator[Any, Any, None]:
        """Write the manifest with the candidate at `weight` and wait until the alias still serves live and every
        listed replica shows this manifest (the candidate loaded at that weight); restart once when it does not
        and no engine refused the candidate."""
        candidate = CandidateEntry(self.ro.req.adapter, self.entry.path, self.entry.sha256, self.entry.version,
                                   weight)
        desired = with_candidate(self.previous, candidate, self.ctx.current_utc_datetime, self.base_model)
        self.ro.replica_check = {"manifest_updated_at": desired.updated_at, "candidate": self.entry.version}
        yield from self.ro.call(Activity.WRITE_MANIFEST, app=self.ro.req.app, manifest=asdict(desired))
        timing = self.ro.timing
        probe = yield from self.ro.wait_for_version(self.live, timing.hot_swap_timeout_s, self.ro.replica_check)
        self.ro.check_refusal(probe)
        if not (serves(probe, self.live) and replicas_agree(probe)) and weight == 0:
            self.ro.status.activation = "restart"
            yield from self.ro.call(Activity.RESTART_APP, app=self.ro.req.app)
            probe = yield from self.ro.wait_for_version(self.live, timing.restart_timeout_s, self.ro.replica_check)
            self.ro.check_refusal(probe)
        verdict = probe.get("replicas") or {}
        self.ro.status.replicas = verdict.get("replicas")
        if not (serves(probe, self.live) and replicas_agree(probe)):
            why = verdict.get("why") or probe.get("error") or f"endpoint serves {probe.get('served_version')!r}"
            raise RolloutFailed(f"the replicas did not take the candidate at {weight:.0%}: {why}", Cause.TRANSIENT)

    def evaluate(self) -> Generator[Any, Any, None]:
        """Each set asked of the candidate and live; the candidate refused below the set's minimum or more than
        the policy's margin below live. The scores go into the record either way."""
        versions = [self.entry.version] + ([self.live] if self.live else [])
        margin = self.policy.quality.max_regression
        evaluation: dict[str, Any] = {"max_regression": margin, "sets": {}, "passed": None}
        self.ro.status.evaluation = evaluation
        problems: list[str] = []
        for name, eval_set in self.sets.items():
            result = yield from self.ro.call(Activity.EVALUATE_ADAPTER, app=self.ro.req.app, versions=versions,
                                             eval_set=eval_set)
            scores = result["scores"]
            cand = scores[self.entry.version]
            minimum = float(eval_set.get("min_score", 1.0))
            evaluation["sets"][name] = {"min_score": minimum, "candidate": _summary(cand),
                                        "live": _summary(scores[self.live]) if self.live else None}
            if cand["score"] < minimum:
                problems.append(f"{name} evaluation set: scored {cand['score']:.2f}, below its minimum {minimum:.2f}")
            elif self.live and scores[self.live]["score"] - cand["score"] > margin + EPSILON:
                live_score = scores[self.live]["score"]
                problems.append(f"{name} evaluation set: scored {cand['score']:.2f} against live's {live_score:.2f} "
                                f"(the policy allows {margin:.2f} less)")
        evaluation["passed"] = not problems
        self.publish()
        if problems:
            raise RolloutFailed("quality gate: " + "; ".join(problems), Cause.CONTENT)

    def next_action(self, seconds: float, accepted: tuple[str, ...]) -> Generator[Any, Any, dict | None]:
        """The first decision in `accepted` sent within `seconds`, or None at the end. Decisions are read from
        where the actions API keeps them (`read_decisions`: each one once, in order; one the stage does not take
        is passed over); the `rollout_action` event only wakes this wait (a `supersede` hint also checks for a
        newer deployment). One wait for the event stays open across calls, so a wake-up sent between two holds is
        taken by the next one."""
        deadline = self.ctx.current_utc_datetime + timedelta(seconds=seconds)
        while True:
            found = yield from self.ro.call(Activity.READ_DECISIONS, app=self.ro.req.app, id=self.ro.req.deployment_id)
            fresh, self.decisions_seen = found["decisions"][self.decisions_seen:], len(found["decisions"])
            for decision in fresh:
                if decision.get("action") in accepted:
                    return {"action": decision["action"], "by": decision.get("by"), "at": decision.get("at")}
            if self.pending_event is None:
                self.pending_event = self.ctx.wait_for_external_event(ACTION_EVENT)
            event = self.pending_event
            if not event.is_completed:
                timer = self.ctx.create_timer(deadline)
                winner = yield self.ctx.task_any([event, timer])
                if winner is timer:
                    return None
                if not timer.is_completed:
                    timer.cancel()
            self.pending_event = None
            # The SDK keeps an event that arrived while no wait was open and completes every later wait of that
            # name with it (DurableOrchestrationContext._add_to_open_tasks): once taken, drop it. At the same point
            # of every replay, so replay-safe; a wake-up dropped here loses nothing (decisions are read above).
            self.ctx.deferred_tasks.pop(ACTION_EVENT, None)
            hint = event.result if isinstance(event.result, dict) else {}
            if hint.get("action") == SUPERSEDE:
                yield from self.give_way()

    def give_way(self) -> Generator[Any, Any, None]:
        """A newer deployment was accepted while this rollout waits (the starters send `supersede`): end
        superseded (rolled back) when the app's newest open record is another one; a stale hint is ignored."""
        open_records = yield from self.ro.call(Activity.INGEST_RECORDS, app=self.ro.req.app)
        newest = open_records[-1]["id"] if open_records else None
        if newest is not None and newest != self.ro.req.deployment_id:
            raise RolloutFailed(f"superseded by {newest} while {self.ro.status.stage}", Cause.SUPERSEDED)

    def await_approval(self) -> Generator[Any, Any, None]:
        yield from self.give_way()  # a deployment accepted before the wait began got no hint
        timeout = self.policy.approval.timeout_s
        deadline = self.ctx.current_utc_datetime + timedelta(seconds=timeout)
        approval: dict[str, Any] = {"required": True, "deadline": deadline.isoformat(), "decision": None}
        self.ro.status.approval = approval
        self.publish()
        action = yield from self.next_action(timeout, ACTIONS_BY_STAGE[Stage.AWAITING_APPROVAL])
        if action is None:
            approval.update(decision="expired", at=deadline.isoformat())
            raise RolloutFailed(f"no approval before the deadline ({timeout:g} s)", Cause.CONTENT)
        approval.update(decision="approved" if action["action"] == "approve" else "rejected", by=action["by"],
                        at=action["at"])
        if action["action"] != "approve":
            raise RolloutFailed(f"rejected{' by ' + action['by'] if action['by'] else ''}", Cause.CONTENT)

    def canary(self) -> Generator[Any, Any, None]:
        policy = self.policy.canary
        assert policy is not None and self.live is not None
        state: dict[str, Any] = {"steps": list(policy.steps), "step": None, "weight": 0, "hold_until": None,
                                 "analysis": []}
        self.ro.status.canary = state
        for number, percent in enumerate(policy.steps, start=1):
            if percent == 100:
                return
            yield from self.give_way()
            yield from self.set_weight(percent / 100)
            before = yield from self.ro.call(Activity.REPLICA_METRICS, app=self.ro.req.app)
            hold_until = self.ctx.current_utc_datetime + timedelta(seconds=policy.hold_s)
            state.update(step=number, weight=percent, hold_until=hold_until.isoformat())
            self.publish()
            action = yield from self.next_action(policy.hold_s, ACTIONS_BY_STAGE[Stage.CANARY])
            after = yield from self.ro.call(Activity.REPLICA_METRICS, app=self.ro.req.app)
            figures = hold_figures(before["metrics"], after["metrics"], (self.live, self.entry.version))
            why = judge(figures, self.live, self.entry.version, policy) if action is None else None
            state["analysis"].append({"step": number, "weight": percent, "figures": figures,
                                      "verdict": action["action"] if action else ("fail" if why else "pass"),
                                      **({"why": why} if why else {}), **(action or {})})
            state["hold_until"] = None
            self.publish()
            if action is not None and action["action"] == "abort":
                raise RolloutFailed(f"aborted at {percent} %{' by ' + action['by'] if action['by'] else ''}",
                                    Cause.CONTENT)
            if action is not None:  # promote
                return
            if why is not None:
                raise RolloutFailed(f"canary at {percent} %: {why}", Cause.CONTENT)
