"""Rollout orchestration: one adapter version of one app from upload to live (or back).

Covers: validate → stage (the staged copy validated again) → provision → [the quality gate, approval and canary
steps where the app's rollout policy or an evaluation set asks for them: `progressive`] → activate (hot swap
through the manifest; a restart only when the server did not take the new version and did not refuse it) → verify (readiness + smoke
chat, then every replica the platform lists reports the new version of the manifest written) → live. Once the manifest is replaced, any failure restores exactly the manifest it replaced (`rolled_back`);
a failure before that ends `failed` with nothing changed. Every failure names its cause (`rollout_status.Cause`):
the reconciler retries transient ones and never retries content ones. No I/O here.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity
from activities.rollout_policy import RolloutPolicy
from inference_image.inference_server.manifest import AdapterEntry, Manifest

from .health_gate import replicas_agree, serves, wait_until_serving
from .manifest_plan import activate, adapter_version
from .policies import IO_RETRY, RolloutTiming
from .progressive import Progressive, eval_sets, is_gated
from .rollout_status import Cause, RolloutFailed, RolloutStatus, Stage

bp = df.Blueprint()

ROLLOUT_ORCHESTRATOR = "rollout"


@dataclass(frozen=True)
class RolloutRequest:
    """Input of one rollout (built by the reconciler)."""

    deployment_id: str
    app: str
    adapter: str
    sha256: str | None = None
    force_restart: bool = False
    timing: dict[str, Any] | None = None
    #: `{"manifest": dict | None}`: what an earlier attempt replaced and could not restore; this attempt treats it
    #: as the manifest it replaces (so a retry never takes an unverified manifest for the one to restore).
    baseline: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutRequest:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Rollout:
    """One orchestration episode's view of a rollout; every method is a generator to `yield from`."""

    def __init__(self, context: df.DurableOrchestrationContext, request: RolloutRequest) -> None:
        self.ctx = context
        self.req = request
        self.timing = RolloutTiming.from_dict(request.timing)
        self.status = RolloutStatus(request.deployment_id, request.app, request.adapter, sha256=request.sha256)
        #: The probe's replica check for the manifest written (`{"manifest_updated_at"}`), set when it is written.
        self.replica_check: dict[str, Any] | None = None

    def enter(self, stage: Stage, reason: str | None = None, cause: Cause | None = None) -> None:
        self.status.enter(stage, self.ctx.current_utc_datetime, reason, cause)
        self.ctx.set_custom_status(self.status.to_dict())

    def call(self, activity: Activity, **payload: Any) -> Generator[Any, Any, Any]:
        """Call an activity with retries: its `ok: false` answer, or its failure after the retries, ends the rollout."""
        try:
            result = yield self.ctx.call_activity_with_retry(activity, IO_RETRY.options(), payload)
        except Exception as exc:  # noqa: BLE001 - still failing after the retries: storage, platform or network
            raise RolloutFailed(f"{activity}: {exc}", Cause.TRANSIENT) from exc
        if isinstance(result, dict) and result.get("ok") is False:
            raise RolloutFailed(result.get("reason") or f"{activity} failed", Cause(result.get("cause") or "content"))
        return result

    def sleep(self, seconds: float) -> Generator[Any, Any, None]:
        yield self.ctx.create_timer(self.ctx.current_utc_datetime + timedelta(seconds=seconds))

    def wait_for_version(self, version: str | None, timeout_s: float, replicas: dict | None = None
                         ) -> Generator[Any, Any, dict]:
        try:
            return (yield from wait_until_serving(self.ctx, self.req.app, version, timeout_s,
                                                  self.timing.poll_interval_s, replicas))
        except Exception as exc:  # noqa: BLE001 - the probe still failing after its retries
            raise RolloutFailed(f"health gate: {exc}", Cause.TRANSIENT) from exc

    @staticmethod
    def check_refusal(probe: dict) -> None:
        """Raise when the probe says an engine (`/ready`'s load errors, or a replica's report) refused the version."""
        if probe.get("refused"):
            raise RolloutFailed(f"the inference engine refused the adapter: {probe['refused']}", Cause.CONTENT)

    def gate(self, probe: dict, waited: str) -> bool:
        """True when the probe shows the new version served; raises when the engine refused it."""
        self.check_refusal(probe)
        if serves(probe, self.status.version):
            return True
        if waited == "restart":
            reason = probe.get("error") or f"endpoint still serves {probe.get('served_version')!r}"
            raise RolloutFailed(f"not serving after the restart: {reason}", Cause.TRANSIENT)
        return False

    def activate(self) -> Generator[Any, Any, None]:
        """Hot swap through the manifest; restart only when the server did not take it (and did not refuse it)."""
        if not self.req.force_restart:
            self.status.activation = "hot_swap"
            probe = yield from self.wait_for_version(self.status.version, self.timing.hot_swap_timeout_s)
            if self.gate(probe, "hot_swap"):
                return
        self.status.activation = "restart"
        yield from self.call(Activity.RESTART_APP, app=self.req.app)
        self.gate((yield from self.wait_for_version(self.status.version, self.timing.restart_timeout_s)), "restart")

    def verify(self) -> Generator[Any, Any, None]:
        """The health gate: the smoke chat must answer from the new version, then every listed replica must report
        it (`replica_gate`). A bad answer is the adapter's fault; a server that is down, failing or serving another
        version is transient."""
        probe: dict = {}
        for attempt in range(self.timing.verify_attempts):
            probe = yield from self.call(Activity.PROBE_ENDPOINT, app=self.req.app, expect_version=self.status.version,
                                         smoke=True, replicas=self.replica_check)
            if serves(probe, self.status.version) and probe.get("reply"):
                yield from self.replica_gate(probe)
                return
            if attempt + 1 < self.timing.verify_attempts:
                yield from self.sleep(self.timing.poll_interval_s)
        reason = probe.get("error") or f"endpoint serves {probe.get('served_version')!r}"
        cause = Cause.CONTENT if probe.get("bad_answer") or probe.get("refused") else Cause.TRANSIENT
        raise RolloutFailed(f"smoke chat failed: {reason}", cause)

    def replica_gate(self, probe: dict) -> Generator[Any, Any, None]:
        """Every replica the platform lists reports the new version (probing until the hot swap timeout); the
        figures go into the record. A replica's engine refusing it is the adapter's fault; a replica that does not
        show it in time is transient."""
        if not probe.get("refused") and not replicas_agree(probe):
            probe = yield from self.wait_for_version(self.status.version, self.timing.hot_swap_timeout_s,
                                                     self.replica_check)
        verdict = probe.get("replicas") or {}
        self.status.replicas = verdict.get("replicas")
        self.check_refusal(probe)
        if not replicas_agree(probe):
            why = verdict.get("why") or probe.get("error") or f"endpoint serves {probe.get('served_version')!r}"
            raise RolloutFailed(f"not every replica serves {self.status.version}: {why}", Cause.TRANSIENT)

    def run(self) -> Generator[Any, Any, dict]:
        req = self.req
        self.enter(Stage.RECEIVED)
        replaced: _Replaced | None = None
        try:
            self.enter(Stage.VALIDATING)
            report = yield from self.call(Activity.VALIDATE_ADAPTER, app=req.app, adapter=req.adapter)
            if req.sha256 and report["sha256"] != req.sha256:
                raise RolloutFailed(f"a newer upload replaced this content (now sha256 {report['sha256'][:12]})",
                                    Cause.SUPERSEDED)
            self.status.sha256 = report["sha256"]
            self.status.version = adapter_version(req.adapter, report["sha256"])

            self.enter(Stage.STAGING)  # the staged copy is validated again: its report is what will be served
            staged = yield from self.call(Activity.STAGE_ADAPTER, app=req.app, adapter=req.adapter, sha256=report["sha256"])

            self.enter(Stage.PROVISIONING)
            yield from self.call(Activity.ENSURE_APP, app=req.app)

            self.enter(Stage.ACTIVATING)
            found = yield from self.call(Activity.READ_POLICY, app=req.app)
            policy = RolloutPolicy.from_dict(found["policy"]) if found.get("policy") else None
            self.status.policy_source = found.get("source")
            if req.baseline is not None:
                raw = req.baseline.get("manifest")
            else:
                raw = yield from self.call(Activity.READ_MANIFEST, app=req.app)
            previous = Manifest.from_dict(raw) if raw else None
            if previous is not None and previous.candidate is not None:  # left by a rollout that crashed: never
                previous = replace(previous, candidate=None)  # restore traffic to a version nobody judged
            entry = AdapterEntry(staged["path"], report["sha256"], self.status.version)
            served_report = staged.get("report") or report
            base_model = served_report.get("base_model")
            replaced = _Replaced(previous)  # from here on a failure restores exactly `previous`
            sets = eval_sets(policy, served_report)
            already_live = previous is not None and previous.active_version == entry.version
            if is_gated(policy, sets) and not already_live:  # the live content itself: nothing to compare or move
                yield from Progressive(self, policy, sets, previous, entry, base_model).run()
                self.enter(Stage.ACTIVATING)  # promotion: the candidate becomes the active adapter
            desired = activate(previous, req.adapter, entry, self.ctx.current_utc_datetime, base_model)
            self.replica_check = {"manifest_updated_at": desired.updated_at}
            yield from self.call(Activity.WRITE_MANIFEST, app=req.app, manifest=asdict(desired))
            yield from self.activate()

            self.enter(Stage.VERIFYING)
            yield from self.verify()
            self.enter(Stage.LIVE)
        except Exception as exc:  # noqa: BLE001 - whatever failed, once the manifest is replaced it is restored
            failure = exc if isinstance(exc, RolloutFailed) else RolloutFailed(f"rollout error: {exc}", Cause.TRANSIENT)
            if replaced is None:
                self.enter(Stage.FAILED, reason=str(failure), cause=failure.cause)
            else:
                yield from self.roll_back(replaced.manifest, failure)
        return self.status.to_dict()

    def roll_back(self, previous: Manifest | None, failure: RolloutFailed) -> Generator[Any, Any, None]:
        """Restore exactly the manifest that was replaced (None: remove the new one, there was none) and see the
        endpoint serve it again (restarting the app if it does not); the rollout ends `rolled_back`, or `failed`
        with `unrestored` set when the restore cannot be confirmed (the next attempt restores that manifest)."""
        restored = asdict(previous) if previous is not None else None
        active = previous.active_version if previous is not None else None
        try:
            yield from self.call(Activity.WRITE_MANIFEST, app=self.req.app, manifest=restored)
            if not serves((yield from self.wait_for_version(active, self.timing.hot_swap_timeout_s)), active):
                yield from self.call(Activity.RESTART_APP, app=self.req.app)
                probe = yield from self.wait_for_version(active, self.timing.restart_timeout_s)
                if not serves(probe, active):
                    raise RolloutFailed(f"the endpoint does not serve {active!r} again: {probe.get('error')}",
                                        Cause.TRANSIENT)
            self.enter(Stage.ROLLED_BACK, reason=str(failure), cause=failure.cause)
        except RolloutFailed as exc:
            self.status.unrestored = {"manifest": restored}
            self.enter(Stage.FAILED, reason=f"{failure}; rollback failed: {exc}", cause=Cause.TRANSIENT)


@dataclass(frozen=True)
class _Replaced:
    """The manifest a rollout replaced (None: there was none)."""

    manifest: Manifest | None


@bp.orchestration_trigger(context_name="context", orchestration=ROLLOUT_ORCHESTRATOR)
def rollout(context: df.DurableOrchestrationContext):
    """Roll one adapter version out to one app; returns the final status record."""
    request = RolloutRequest.from_dict(context.get_input())
    return (yield from _Rollout(context, request).run())
