"""An app's lifecycle: rolling back to an earlier version, and deleting the app.

`POST /api/apps/{app}/rollback` (body `{}` or `{"to": VERSION}`) redeploys an earlier version as a normal rollout:
a deploy request with its own record (`starters.request_deployment`, the same path as `POST .../deployments`),
carrying `rollback_of` (the version served when it was asked) and `rollback_to`. Without `to` the target is the
newest version that went live before the one served now (from the app's deployment records); `to` is a version as
records and manifests show it (`<adapter>@<sha256 prefix>`) or an adapter name (its stored content). The version's
adapter must still hold that content in the upload store (a later upload under the same name replaces it): 404
naming why otherwise, and 404 when there is nothing earlier to roll back to.

`DELETE /api/apps/{app}` removes the app: its platform app (the local server stopped and its state dropped; in
Azure the container app deleted, the environment, storage, share, workspace and registry kept as they are shared),
its store root (manifest and staged versions) and everything of it in the upload container (uploads and deployment
records). It is a Durable orchestration (`delete-<app>.<time>`, readable at `GET /api/deployments/{id}` like provision
and restart, ending `state: deleted` or `failed` with a reason), so it survives a host restart and retries its
steps. Order, and why nothing brings the app back:

1. the route writes the app's deletion marker (`DeploymentRecords.mark_deleting`). From then on the reconciler's
   pass finds nothing to roll out (`ingest` returns nothing), its heal pass leaves the app alone, and the activities
   that would start or change the server (ensure, restart, provisioning steps) refuse (`app_deleting`); deploy and
   rollback requests answer 409;
2. the route refuses (409, the marker removed again) while a rollout may run: an open deployment record
   (received, in a rollout, or retrying), an upload under way (files without a later `_COMPLETE` marker written
   within `UPLOAD_QUIET_S`), or a reconciler still in a pass (`checking`, `rolling_out`) after
   `SETTLE_S` (a heal pass ends within it). Deleting never waits for a rollout or cuts one short: try again once
   it ended (`adapterctl status --app APP`);
3. the route ends the app's reconciler (it is waiting: nothing is lost) and starts the orchestration, which deletes
   the platform app, the store root, then the blobs, the marker last. A new upload or deploy request afterwards
   starts the app afresh (a new reconciler). An upload that arrives during the deletion is deleted with the app.

A deletion that fails (e.g. ARM refuses) leaves the marker: the app shows `deleting` in `GET /api/apps/{app}`,
takes no deployments, and `DELETE` again retries it. A `DELETE` while one runs answers 202 with the running one's id.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from activities.apps import LifecycleActivity
from activities.records import stamp
from activities.services import services
from activities.validation import check_name

from .http_util import BadRequest, answers_bad_requests, app_name, json_body, json_response
from .policies import IO_RETRY
from .reconcile import reconcile_instance_id
from .starters import LIVE_STATES, _status_url, request_deployment
from .status_api import _manifest, app_presence

bp = df.Blueprint()

DELETE_ORCHESTRATOR = "delete"
#: Reconciler phases in which it waits (for a wake, a timer or a retry time): no pass runs, nothing is rolled out.
WAITING_PHASES = frozenset({"idle", "error", "waiting_retry"})
#: How long DELETE waits for a reconciler's pass with nothing open (a heal pass) to end before answering 409.
SETTLE_S = 5.0
#: A file written into an adapter's folder after its marker (or with none) this recently is an upload under way:
#: DELETE answers 409 rather than delete the app under it (its marker would then bring a half app back). An upload
#: abandoned longer ago (an interrupted `adapterctl deploy`) no longer holds a deletion back.
UPLOAD_QUIET_S = 600.0


# -- rollback ------------------------------------------------------------------------------------------------------
def rollback_target(app: str, to: str | None) -> dict[str, Any]:
    """The version to roll back to: `{"adapter", "sha256", "version", "current"}`; LookupError when there is none."""
    svc = services()
    live = svc.records.live_records(app)
    manifest = _manifest(app)[0] or {}  # unreadable: the records alone say what was live
    active = (manifest.get("adapters") or {}).get(manifest.get("active") or "") or {}
    current = active.get("version") or (live[0]["version"] if live else None)
    known = [{"adapter": r["adapter"], "sha256": r.get("sha256"), "version": r["version"]} for r in live]
    known += [{"adapter": name, "sha256": e.get("sha256"), "version": e.get("version")}
              for name, e in (manifest.get("adapters") or {}).items()]
    if to is None:
        earlier = next((k for k in known[: len(live)] if k["version"] != current), None)
        if earlier is None:
            raise LookupError(f"app {app!r} has no earlier live version to roll back to"
                              + (f" (serving {current})" if current else ""))
        return {**earlier, "current": current}
    if "@" in to:
        found = next((k for k in known if k["version"] == to and k["sha256"]), None)
        if found is None:
            versions = sorted({k["version"] for k in known if k["version"]})
            raise LookupError(f"app {app!r} has no version {to!r}"
                              + (f" (known: {', '.join(versions)})" if versions else ""))
        return {**found, "current": current}
    try:
        check_name("adapter", to)
    except ValueError as exc:
        raise BadRequest(f"'to' must be a version (adapter@sha256 prefix) or an adapter name: {exc}") from exc
    return {"adapter": to, "sha256": None, "version": None, "current": current}


@bp.route(route="apps/{app}/rollback", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def start_rollback(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Redeploy an earlier version (body `{"to": version}` optional): a deploy request with its own record."""
    app = app_name(req)
    to = json_body(req).get("to")
    if to is not None and (not isinstance(to, str) or not to):
        raise BadRequest("'to' must be a version (adapter@sha256 prefix) or an adapter name")
    target = await asyncio.to_thread(rollback_target, app, to)
    return await request_deployment(req, client, app, target["adapter"], expect_sha256=target["sha256"],
                                    rollback_of=target["current"], rollback_to=target["version"])


# -- deletion ----------------------------------------------------------------------------------------------------
async def _busy(client: df.DurableOrchestrationClient, app: str) -> str | None:
    """Why the app may be rolling out now (its open records, or its reconciler in a pass), else None."""
    open_ids = await asyncio.to_thread(services().records.open_ids, app)
    if open_ids:
        return f"app {app!r} has deployments that have not ended ({', '.join(open_ids[:3])})"
    uploading = await asyncio.to_thread(services().store.uploads_in_flight, app, UPLOAD_QUIET_S)
    if uploading:
        return (f"an upload into app {app!r} is under way ({', '.join(uploading[:3])}: files written in the last "
                f"{UPLOAD_QUIET_S / 60:.0f} minutes, no _COMPLETE marker after them)")
    return await _in_pass(client, app)


async def _in_pass(client: df.DurableOrchestrationClient, app: str) -> str | None:
    status = await client.get_status(reconcile_instance_id(app))
    if status and status.runtime_status in LIVE_STATES:
        custom = status.custom_status if isinstance(status.custom_status, dict) else {}
        if custom.get("phase") not in WAITING_PHASES:
            return f"the reconciler of app {app!r} is in a pass ({custom.get('phase') or 'starting'})"
    return None


async def _settled(client: df.DurableOrchestrationClient, app: str) -> str | None:
    """`_busy`, giving a reconciler that is in a pass with nothing open (a heal pass) `SETTLE_S` to end it: with
    the deletion marker written, its next look finds nothing to roll out."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    busy = await _busy(client, app)
    while busy and busy.startswith("the reconciler") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        busy = await _busy(client, app)
    return busy


@bp.route(route="apps/{app}", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
@answers_bad_requests
async def delete_app_route(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Delete the app (see the module docstring): 202 with the deletion's id; 404 no such app; 409 while it may
    be rolling out."""
    app = app_name(req)
    records = services().records
    previous = await asyncio.to_thread(records.deletion, app)
    if previous and previous.get("id"):
        running = await client.get_status(previous["id"])
        if running and running.runtime_status in LIVE_STATES:
            return _accepted(req, app, previous["id"])
    if previous is None and not any((await app_presence(app)).values()):
        raise LookupError(f"no app {app!r} to delete")
    deletion_id = f"{DELETE_ORCHESTRATOR}-{app}.{stamp(datetime.now(UTC))}"
    await asyncio.to_thread(records.mark_deleting, app, deletion_id)
    busy = await _settled(client, app)
    if busy:
        await _undo(app, previous, deletion_id)  # an earlier deletion that failed keeps its marker
        raise BadRequest(f"{busy}; not deleting while a rollout may run: try again when it ended", 409)
    reconciler = await client.get_status(reconcile_instance_id(app))
    if reconciler and reconciler.runtime_status in LIVE_STATES:
        try:
            await client.terminate(reconcile_instance_id(app), f"app deleted by {deletion_id}")
        except Exception as exc:  # noqa: BLE001 - it may have ended by itself meanwhile: fine, else refuse
            reconciler = await client.get_status(reconcile_instance_id(app))
            if reconciler and reconciler.runtime_status in LIVE_STATES:
                await _undo(app, previous, deletion_id)
                raise BadRequest(f"could not end the reconciler of app {app!r} ({type(exc).__name__}); try again",
                                 503) from exc
    try:
        await client.start_new(DELETE_ORCHESTRATOR, deletion_id, {"app": app})
    except Exception as exc:  # noqa: BLE001 - the marker stays (nothing starts the app); DELETE again retries
        raise BadRequest(f"could not start the deletion of app {app!r} ({type(exc).__name__}); the app stays marked "
                         "as being deleted: DELETE it again", 503) from exc
    return _accepted(req, app, deletion_id)


async def _undo(app: str, previous: dict[str, Any] | None, deletion_id: str) -> None:
    """Put the deletion marker back as it was before this request (none, or a failed deletion's)."""
    records = services().records
    if previous is None:
        await asyncio.to_thread(records.clear_deleting, app)
    else:
        await asyncio.to_thread(records.mark_deleting, app, previous.get("id") or deletion_id)


def _accepted(req: func.HttpRequest, app: str, deletion_id: str) -> func.HttpResponse:
    url = _status_url(req, deletion_id)
    return json_response({"id": deletion_id, "app": app, "status_url": url}, 202, {"Location": url})


@bp.orchestration_trigger(context_name="context", orchestration=DELETE_ORCHESTRATOR)
def delete_app_orchestration(context: df.DurableOrchestrationContext):
    """Delete the platform app, the store root and the app's blobs (one idempotent activity, retried)."""
    app = context.get_input()["app"]
    context.set_custom_status({"app": app, "state": "deleting"})
    try:
        result = yield context.call_activity_with_retry(LifecycleActivity.DELETE_APP, IO_RETRY.options(), {"app": app})
    except Exception as exc:  # noqa: BLE001 - still failing after the retries: reported, the marker stays
        result = {"ok": False, "reason": f"{LifecycleActivity.DELETE_APP}: {exc}"}
    if result.get("ok") is False:
        outcome = {"app": app, "state": "failed",
                   "reason": f"{result.get('reason')}; the app stays marked as being deleted: DELETE it again"}
    else:
        outcome = {"app": app, "state": "deleted", **{k: result.get(k) for k in ("platform", "store", "blobs")}}
    context.set_custom_status(outcome)
    return outcome

