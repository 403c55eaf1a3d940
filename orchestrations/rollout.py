"""Rollout orchestration: one adapter version of one app from upload to live (or back).

Covers: validate → stage → provision → activate (hot swap through the manifest, restart as fallback) →
verify (readiness + smoke chat) → live; on a failed gate the previous manifest is restored (`rolled_back`);
a permanent error before activation ends `failed` with the served adapter untouched. No I/O here.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from activities.catalog import Activity
from inference_image.inference_server.manifest import AdapterEntry, Manifest

from .health_gate import serves, wait_until_serving
from .manifest_plan import activate, adapter_version
from .policies import IO_RETRY, RolloutTiming
from .rollout_status import RolloutStatus, Stage

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutRequest:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RolloutFailed(Exception):
    """A permanent failure: the rollout stops with this reason."""


class _Rollout:
    """One orchestration episode's view of a rollout; every method is a generator to `yield from`."""

    def __init__(self, context: df.DurableOrchestrationContext, request: RolloutRequest) -> None:
        self.ctx = context
        self.req = request
        self.timing = RolloutTiming.from_dict(request.timing)
        self.status = RolloutStatus(request.deployment_id, request.app, request.adapter, sha256=request.sha256)

    def enter(self, stage: Stage, reason: str | None = None) -> None:
        self.status.enter(stage, self.ctx.current_utc_datetime, reason)
        self.ctx.set_custom_status(self.status.to_dict())

    def call(self, activity: Activity, **payload: Any) -> Generator[Any, Any, Any]:
        result = yield self.ctx.call_activity_with_retry(activity, IO_RETRY.options(), payload)
        if isinstance(result, dict) and result.get("ok") is False:
            raise RolloutFailed(result.get("reason") or f"{activity} failed")
        return result

    def sleep(self, seconds: float) -> Generator[Any, Any, None]:
        yield self.ctx.create_timer(self.ctx.current_utc_datetime + timedelta(seconds=seconds))

    def wait_for_version(self, version: str | None, timeout_s: float) -> Generator[Any, Any, dict]:
        return (yield from wait_until_serving(self.ctx, self.req.app, version, timeout_s, self.timing.poll_interval_s))

    def restart(self, version: str | None) -> Generator[Any, Any, dict]:
        yield from self.call(Activity.RESTART_APP, app=self.req.app)
        return (yield from self.wait_for_version(version, self.timing.restart_timeout_s))

    def verify(self) -> Generator[Any, Any, str | None]:
        """The health gate: None when the smoke chat passed, else the last reason."""
        reason = "no probe ran"
        for attempt in range(self.timing.verify_attempts):
            probe = yield from self.call(
                Activity.PROBE_ENDPOINT, app=self.req.app, expect_version=self.status.version, smoke=True
            )
            if serves(probe, self.status.version) and probe.get("reply"):
                return None
            reason = probe.get("error") or f"endpoint serves {probe.get('served_version')!r}"
            if attempt + 1 < self.timing.verify_attempts:
                yield from self.sleep(self.timing.poll_interval_s)
        return reason

    def run(self) -> Generator[Any, Any, dict]:
        req = self.req
        self.enter(Stage.RECEIVED)
        previous: Manifest | None = None
        try:
            self.enter(Stage.VALIDATING)
            report = yield from self.call(Activity.VALIDATE_ADAPTER, app=req.app, adapter=req.adapter)
            if req.sha256 and report["sha256"] != req.sha256:
                raise RolloutFailed(f"adapter content changed since upload (sha256 {report['sha256'][:12]})")
            self.status.sha256 = report["sha256"]
            self.status.version = adapter_version(req.adapter, report["sha256"])

            self.enter(Stage.STAGING)
            staged = yield from self.call(Activity.STAGE_ADAPTER, app=req.app, adapter=req.adapter, sha256=report["sha256"])

            self.enter(Stage.PROVISIONING)
            yield from self.call(Activity.ENSURE_APP, app=req.app)

            self.enter(Stage.ACTIVATING)
            raw = yield from self.call(Activity.READ_MANIFEST, app=req.app)
            previous = Manifest.from_dict(raw) if raw else None
            entry = AdapterEntry(staged["path"], report["sha256"], self.status.version)
            desired = activate(previous, req.adapter, entry, self.ctx.current_utc_datetime, report.get("base_model"))
            yield from self.call(Activity.WRITE_MANIFEST, app=req.app, manifest=asdict(desired))
            restart_first = req.force_restart
            probe: dict = {}
            if not restart_first:
                self.status.activation = "hot_swap"
                probe = yield from self.wait_for_version(self.status.version, self.timing.hot_swap_timeout_s)
            if restart_first or not serves(probe, self.status.version):
                self.status.activation = "restart"
                probe = yield from self.restart(self.status.version)
            if not serves(probe, self.status.version):
                raise _GateFailed(probe.get("error") or f"endpoint still serves {probe.get('served_version')!r}")

            self.enter(Stage.VERIFYING)
            failure = yield from self.verify()
            if failure:
                raise _GateFailed(failure)
            self.enter(Stage.LIVE)
        except _GateFailed as exc:
            yield from self.roll_back(previous, f"health gate failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - activity failures arrive as plain exceptions
            if self.status.stage in (Stage.ACTIVATING, Stage.VERIFYING):
                yield from self.roll_back(previous, str(exc))
            else:
                self.enter(Stage.FAILED, reason=str(exc))
        return self.status.to_dict()

    def roll_back(self, previous: Manifest | None, reason: str) -> Generator[Any, Any, None]:
        """Restore the manifest that served before; the rollout ends `rolled_back` (or `failed` if that fails)."""
        try:
            restored = previous or Manifest()
            yield from self.call(Activity.WRITE_MANIFEST, app=self.req.app, manifest=asdict(restored))
            yield from self.wait_for_version(restored.active_version, self.timing.hot_swap_timeout_s)
            self.enter(Stage.ROLLED_BACK, reason=reason)
        except Exception as exc:  # noqa: BLE001
            self.enter(Stage.FAILED, reason=f"{reason}; rollback failed: {exc}")


class _GateFailed(Exception):
    """The new version did not become ready / did not pass the smoke chat."""


@bp.orchestration_trigger(context_name="context", orchestration=ROLLOUT_ORCHESTRATOR)
def rollout(context: df.DurableOrchestrationContext):
    """Roll one adapter version out to one app; returns the final status record."""
    request = RolloutRequest.from_dict(context.get_input())
    return (yield from _Rollout(context, request).run())
