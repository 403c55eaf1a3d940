"""Durable activity functions: thin wrappers from JSON inputs to the modules that talk to each system.

Covers every name in `activities.catalog.Activity` and `activities.apps.LifecycleActivity`. While an app is being
deleted (its deletion marker, `DeploymentRecords.deletion`), the activities that would start or change its server
(ensure, restart, provisioning steps) refuse with `code: app_deleting` and the heal pass leaves it alone, so nothing
brings a deleted app back. Permanent failures (a bad adapter, a missing upload, ARM
refusing a request) are returned as `{"ok": false, "code", "reason"}` so the orchestrator stops at once; a
transient fault is raised for `call_activity_with_retry`, after sleeping for the server's Retry-After.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import azure.durable_functions as df

from activities.apps import LifecycleActivity
from activities.catalog import Activity
from activities.services import services

if TYPE_CHECKING:
    from activities.platform.base import AppState

bp = df.Blueprint()
log = logging.getLogger(__name__)

#: The longest Retry-After we honour inside one activity attempt (longer waits: the next attempt's interval).
MAX_RETRY_AFTER_S = 30.0
SMOKE_PROMPT = "Say hello."
#: Readiness probes per gate check, at most (2 per replica).
MAX_PROBE_ROUNDS = 10
#: An evaluation's chat requests: (connect, read) timeout in seconds each, and the whole evaluation's deadline
#: (under host.json's 10-minute functionTimeout, so running out is our error, retried, not the host's kill).
EVAL_REQUEST_TIMEOUT_S = (5.0, 30.0)
EVAL_DEADLINE_S = 480.0
#: An evaluation raises (for the activity retry) when its first this-many requests all go unanswered.
EVAL_UNREACHABLE_AFTER = 5
#: Statuses that say nothing about the adapter (the orchestrator's key refused): not an answer.
_NOT_ANSWERS = (401, 403)


def _failure(code: str, reason: str, cause: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "reason": reason, "cause": cause}


def permanent_failures(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """Turn permanent errors into `ok: false` results with their cause (`content`: the adapter or its upload is
    at fault; `superseded`: a newer upload replaced it; `platform`: the platform refused the request); let
    transient ones raise (after Retry-After)."""

    @functools.wraps(fn)
    def wrapper(payload: dict) -> Any:
        from activities.adapter_store import AdapterReplacedError, AdapterStoreError
        from activities.platform.base import PlatformError, TransientPlatformError
        from activities.validation import AdapterValidationError

        try:
            return fn(payload)
        except AdapterValidationError as exc:
            return _failure(exc.code, f"{exc.code}: {exc.reason}", "content")
        except TransientPlatformError as exc:
            if exc.retry_after:
                time.sleep(min(float(exc.retry_after), MAX_RETRY_AFTER_S))
            raise
        except AdapterStoreError as exc:
            return _failure(exc.code, str(exc), "superseded" if isinstance(exc, AdapterReplacedError) else "content")
        except PlatformError as exc:
            return _failure(getattr(exc, "code", type(exc).__name__), str(exc), "platform")

    return wrapper


@bp.activity_trigger(input_name="payload", activity=Activity.INGEST_RECORDS)
def ingest_records(payload: dict) -> list[dict]:
    return services().records.ingest(payload["app"])


@bp.activity_trigger(input_name="payload", activity=Activity.UPDATE_RECORD)
def update_record(payload: dict) -> dict:
    return services().records.update(payload["app"], payload["id"], payload["changes"])


@bp.activity_trigger(input_name="payload", activity=Activity.VALIDATE_ADAPTER)
@permanent_failures
def validate_adapter(payload: dict) -> dict:
    from activities.adapter_store import ValidateInput

    svc = services()
    report = svc.store.validate(ValidateInput(payload["app"], payload["adapter"], svc.rules()))
    return {"ok": True, **report.to_dict()}


@bp.activity_trigger(input_name="payload", activity=Activity.STAGE_ADAPTER)
@permanent_failures
def stage_adapter(payload: dict) -> dict:
    from activities.adapter_store import StageInput
    from activities.adapter_store import stage_adapter as stage

    svc = services()
    request = StageInput(payload["app"], payload["adapter"], payload["sha256"])
    result = stage(svc.store, svc.target, request, svc.rules())
    return {"ok": True, **result.to_dict()}


@bp.activity_trigger(input_name="payload", activity=Activity.READ_MANIFEST)
def read_manifest(payload: dict) -> dict | None:
    return services().read_manifest(payload["app"])


@bp.activity_trigger(input_name="payload", activity=Activity.WRITE_MANIFEST)
def write_manifest(payload: dict) -> dict:
    """Write the app's manifest; `manifest` None removes it (a rollback to "there was none")."""
    from inference_image.inference_server.manifest import Manifest

    raw = payload["manifest"]
    services().target.write_manifest(payload["app"], Manifest.from_dict(raw) if raw is not None else None)
    return {"ok": True}


def _deleting(app: str) -> dict[str, Any] | None:
    """The refusal of an activity that would start or change a server while the app is being deleted."""
    marker = services().records.deletion(app)
    if marker is None:
        return None
    return _failure("app_deleting", f"app {app!r} is being deleted ({marker.get('id')})", "platform")


@bp.activity_trigger(input_name="payload", activity=Activity.ENSURE_APP)
@permanent_failures
def ensure_app(payload: dict) -> dict:
    return _deleting(payload["app"]) or services().apps.ensure(payload["app"])


@bp.activity_trigger(input_name="payload", activity=Activity.RESTART_APP)
@permanent_failures
def restart_app(payload: dict) -> dict:
    refused = _deleting(payload["app"])
    if refused:
        return refused
    state = services().apps.restart(payload["app"])
    return {"ok": True, "revision": state.revision}


@bp.activity_trigger(input_name="payload", activity=Activity.HEAL_APP)
@permanent_failures
def heal_app(payload: dict) -> dict:
    """Restart the app when it should run but its server died or failed (`action`, and `reason` when restarted);
    never while it is being deleted."""
    if services().records.deletion(payload["app"]) is not None:
        return {"ok": True, "action": "none"}
    return {"ok": True, **services().apps.heal(payload["app"])}


@bp.activity_trigger(input_name="payload", activity=LifecycleActivity.DELETE_APP)
@permanent_failures
def delete_app(payload: dict) -> dict:
    """Delete the app: platform app, store root, then its blobs (uploads, records, the deletion marker last).
    Idempotent (a retry finishes what an earlier attempt began)."""
    svc = services()
    app = payload["app"]
    platform = svc.apps.delete(app)
    store = svc.target.remove_app(app)
    blobs = svc.records.delete_app(app)
    return {"ok": True, "platform": "deleted" if platform else "absent", "store": store, "blobs": blobs}


def _replica_check(app: str, version: str | None, manifest_updated_at: str | None, candidate: str | None = None
                   ) -> dict[str, Any]:
    """`replica_verdict` over the platform's listed replicas and their reports; a platform or store that cannot
    answer now is `waiting` (the gate probes again)."""
    from activities.platform.base import PlatformError
    from activities.replica_reports import ReplicaVerdict, replica_verdict, replicas_observed

    svc = services()
    try:
        listed = svc.apps.list_replicas(app)
        observed = replicas_observed(svc.target, app)
    except (PlatformError, OSError) as exc:
        return ReplicaVerdict("waiting", f"cannot list the replicas: {exc}").to_dict()
    return replica_verdict(listed, observed, version, manifest_updated_at, candidate).to_dict()


class EndpointUnavailable(RuntimeError):
    """The app's endpoint has no address yet, or answered none of the evaluation's first requests (retried)."""


def _described(app: str) -> AppState:
    """The app's platform state, with an endpoint (`EndpointUnavailable` when it has none yet)."""
    state = services().apps.describe(app)
    if not state.endpoint:
        raise EndpointUnavailable("the app has no endpoint yet")
    return state


@bp.activity_trigger(input_name="payload", activity=Activity.PROBE_ENDPOINT)
def probe_endpoint(payload: dict) -> dict:
    """Readiness (and a smoke chat when asked) of the app's endpoint; never raises for an unhealthy app.

    With `replicas: {"manifest_updated_at", "candidate"?}` and a ready endpoint, the answer also carries `replicas`
    (the `ReplicaVerdict` for `expect_version`, None: the base model); a replica's engine refusing the version or
    the manifest's candidate sets `refused` as `/ready`'s load errors do."""
    import requests

    from activities.endpoint import ProbeInput, ProbeResult
    from activities.endpoint import probe_endpoint as probe
    from activities.platform.base import PlatformError

    svc = services()
    try:
        state = _described(payload["app"])
    except (PlatformError, EndpointUnavailable) as exc:
        return asdict(ProbeResult(False, error=str(exc)))
    request = ProbeInput(
        endpoint=state.endpoint,
        api_key=svc.settings.inference_api_key,
        expect_version=payload.get("expect_version"),
        smoke_model=svc.alias if payload.get("smoke") else None,
        smoke_prompt=SMOKE_PROMPT,
    )
    # The ingress spreads requests over the replicas: ask about twice per replica, so a lagging one shows.
    rounds = min(MAX_PROBE_ROUNDS, 2 * max(1, state.replicas))
    with requests.Session() as http:
        for _ in range(rounds - 1):
            result = probe(replace(request, smoke_model=None), http)
            if not result.ready:
                return asdict(result)
        answer = asdict(probe(request, http))
    check = payload.get("replicas")
    if check is None or not answer["ready"]:
        return answer
    verdict = _replica_check(payload["app"], request.expect_version, check.get("manifest_updated_at"),
                             check.get("candidate"))
    if verdict["state"] == "refused":
        answer["refused"] = f"{verdict['why']} (replica {verdict['replica']})"
    return {**answer, "replicas": verdict}


@bp.activity_trigger(input_name="payload", activity=Activity.EVALUATE_ADAPTER)
def evaluate_adapter(payload: dict) -> dict:
    """Ask each case of `eval_set` of each of `versions` (by version name) and score the replies:
    `{ok: true, scores: {version: eval_set.score dict}}`.

    A request that fails (network, timeout, 5xx, a 4xx, no content) fails its case with the error. The activity
    raises, for the retry, when the app has no endpoint (or the platform cannot say), when none of the first
    `EVAL_UNREACHABLE_AFTER` requests (nor any, when there are fewer) gets an answer below 500 other than 401/403
    (the server is down or refuses our key: not the adapter's fault), and when the evaluation runs past
    `EVAL_DEADLINE_S`. A set that does not parse is `{ok: false, code: eval_set_invalid, cause: content}`."""
    import requests

    from activities.endpoint import chat_completion
    from activities.eval_set import EvalSet, EvalSetError, score

    try:
        eval_set = EvalSet.from_dict(payload["eval_set"])
    except EvalSetError as exc:
        return _failure("eval_set_invalid", f"eval_set_invalid: {exc}", "content")
    endpoint, key = _described(payload["app"]).endpoint, services().settings.inference_api_key
    deadline = time.monotonic() + EVAL_DEADLINE_S
    asked = answered = 0
    last_error: str | None = None
    scores: dict[str, Any] = {}
    with requests.Session() as http:
        for version in payload["versions"]:
            replies: list[str | None] = []
            errors: list[str | None] = []
            for case in eval_set.cases:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the evaluation ran past {EVAL_DEADLINE_S:.0f} s")
                chat = chat_completion(http, endpoint, key, version, case.chat_messages(), eval_set.max_tokens,
                                       EVAL_REQUEST_TIMEOUT_S)
                asked += 1
                answered += chat.status is not None and chat.status < 500 and chat.status not in _NOT_ANSWERS
                if not answered and asked >= EVAL_UNREACHABLE_AFTER:
                    raise EndpointUnavailable(f"{asked} evaluation requests got no answer: chat {chat.error}")
                if chat.reply is None:
                    last_error = f"chat {chat.error}"
                replies.append(chat.reply)
                errors.append(None if chat.reply is not None else last_error)
            scores[version] = score(eval_set, replies, errors)
    if asked and not answered:
        raise EndpointUnavailable(f"none of {asked} evaluation requests got an answer: {last_error}")
    return {"ok": True, "scores": scores}


@bp.activity_trigger(input_name="payload", activity=Activity.PLAN_PROVISIONING)
@permanent_failures
def plan_provisioning(payload: dict) -> dict:
    return {"ok": True, "steps": services().apps.steps(payload["app"])}


@bp.activity_trigger(input_name="payload", activity=Activity.PROVISION_STEP)
@permanent_failures
def provision_step(payload: dict) -> dict:
    return _deleting(payload["app"]) or services().apps.run_step(payload["app"], payload["step"])
