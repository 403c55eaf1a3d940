"""The app lifecycle routes of `function_app` on devhost, with the upload store on Azurite and the local platform
running the stand-in server: `GET /api/apps` on a fresh host, `GET /api/apps/{app}` (404 unknown, 503 when the
platform cannot answer), `DELETE /api/apps/{app}` (the delete orchestration; 409 while a rollout may run) and
`POST /api/apps/{app}/rollback` (a deploy request with its own record)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import requests

import function_app
from activities import functions as activity_functions
from activities.adapter_store import AdapterStore, BlobStoreSettings, LocalFolderTarget
from activities.apps import LocalApps
from activities.config import Settings
from activities.platform.base import AppSpec, PlatformError
from activities.platform.local import LocalPlatform, LocalPlatformSettings
from activities.records import DeploymentRecords
from activities.services import Services
from devhost.azurite import Azurite
from devhost.host import DevHost
from inference_image.inference_server.manifest import AdapterEntry, Manifest
from orchestrations import lifecycle, progressive_api, starters, status_api
from tests.activities.lora_builder import adapter_files, write_adapter

pytestmark = pytest.mark.azurite
STANDIN = Path(__file__).resolve().parents[1] / "activities" / "standin_server.py"


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite(blob_port=0) as emulator:
        yield emulator


@pytest.fixture
async def host(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[SimpleNamespace]:
    """function_app on devhost; services: a container that does not exist yet, a local store folder, local apps
    running the stand-in server. `woken` lists the apps whose reconciler a request woke (none is started)."""
    store = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string,
                                           container=f"adapters-{uuid.uuid4().hex[:12]}"))
    platform = LocalPlatform(LocalPlatformSettings(
        state_dir=tmp_path / "platform", store_root=tmp_path / "store",
        server_command=(sys.executable, str(STANDIN)), start_timeout=20.0, stop_timeout=5.0))
    apps = LocalApps(platform, lambda name: AppSpec(app=name, image="local"))
    svc = Services(Settings(base_model_name="tiny-llama", platform="local"), store,
                   LocalFolderTarget(tmp_path / "store"), apps, DeploymentRecords(store))
    for module in (activity_functions, status_api, starters, lifecycle, progressive_api):
        monkeypatch.setattr(module, "services", lambda: svc)
    woken: list[str] = []

    async def wake(client, app: str, reason: str, newer: bool = False) -> str:
        woken.append(app)
        return f"reconcile-{app}"

    monkeypatch.setattr(starters, "wake_reconciler", wake)
    devhost = DevHost(function_app.app, state_dir=tmp_path / "durable", port=0)
    await devhost.start()
    try:
        async with aiohttp.ClientSession(base_url=devhost.url) as http:
            yield SimpleNamespace(devhost=devhost, http=http, svc=svc, platform=platform, woken=woken,
                                  tmp=tmp_path)
    finally:
        await devhost.stop()
        platform.stop_all()
        if store.container.exists():
            store.container.delete_container()
        store.close()


async def call(host: SimpleNamespace, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    async with host.http.request(method, f"/api/{path}", json=body) as resp:
        assert resp.content_type == "application/json", (path, resp.status, await resp.text())
        return resp.status, await resp.json()


async def finished(host: SimpleNamespace, instance_id: str, timeout: float = 60) -> dict:
    for _ in range(int(timeout / 0.1)):
        status, record = await call(host, "GET", f"deployments/{instance_id}")
        assert status == 200, record
        if record.get("runtime_status") in ("Completed", "Failed", "Terminated"):
            return record
        await asyncio.sleep(0.1)
    raise TimeoutError(instance_id)


def upload(host: SimpleNamespace, app: str, adapter: str, seed: str):
    folder = write_adapter(host.tmp / f"{app}-{adapter}-{seed}", adapter_files(seed=seed))
    host.svc.store.ensure_container()
    return host.svc.store.upload_adapter_folder(folder, app, adapter)


def went_live(host: SimpleNamespace, app: str, uploaded) -> str:
    """Record the upload and end its record `live` (what the reconciler writes); returns its version."""
    version = f"{uploaded.adapter}@{uploaded.sha256[:12]}"
    records = host.svc.records
    records.ingest(app)
    records.update(app, uploaded.deployment_id, {"stage": "live", "version": version})
    return version


def serve(host: SimpleNamespace, app: str, uploaded) -> None:
    """Write the app's manifest serving `uploaded` (what a rollout writes)."""
    version = f"{uploaded.adapter}@{uploaded.sha256[:12]}"
    entry = AdapterEntry(f"adapters/{uploaded.adapter}/{uploaded.sha256}", uploaded.sha256, version)
    host.svc.target.write_manifest(app, Manifest(adapters={uploaded.adapter: entry}, active=uploaded.adapter))


async def test_fresh_host_has_no_apps_and_unknown_apps_are_404(host) -> None:
    """Before any upload (the container does not even exist): `{"apps": []}`; an unknown app is 404 with a reason
    on every lifecycle route; bad names are 400."""
    assert not host.svc.store.container.exists()
    assert await call(host, "GET", "apps") == (200, {"apps": []})
    for method, path in (("GET", "apps/ghost"), ("DELETE", "apps/ghost"), ("POST", "apps/ghost/rollback")):
        status, body = await call(host, method, path)
        assert status == 404 and "ghost" in body["error"]["message"], (method, path, body)
    for method, path in (("GET", "apps/Bad_App"), ("DELETE", "apps/Bad_App"), ("POST", "apps/Bad_App/rollback")):
        status, body = await call(host, method, path)
        assert status == 400 and "app name" in body["error"]["message"], (method, path, body)
    assert await call(host, "GET", "apps") == (200, {"apps": []})


async def test_an_app_exists_on_the_platform_or_in_the_store(host) -> None:
    """Provisioning alone makes an app (the platform has it); an upload alone does too; presence says which."""
    status, started = await call(host, "POST", "apps/prov/provision")
    assert status == 202
    assert (await finished(host, started["id"]))["state"] == "provisioned"
    status, info = await call(host, "GET", "apps/prov")
    assert status == 200 and info["presence"] == {"platform": True, "uploads": False, "store": False}
    assert info["exists"] is True and info["deleting"] is None and info["running"] is True
    upload(host, "up", "alpha", "1")
    status, info = await call(host, "GET", "apps/up")
    assert status == 200 and info["presence"] == {"platform": False, "uploads": True, "store": False}


async def test_platform_failure_is_a_503_with_a_reason(host, monkeypatch: pytest.MonkeyPatch) -> None:
    """describe raising PlatformError (an unreadable state file, ARM refusing): 503 naming it, never a 500."""
    def broken(app: str):
        raise PlatformError("state file is unreadable: boom")

    monkeypatch.setattr(host.svc.apps, "describe", broken)
    status, body = await call(host, "GET", "apps/any")
    assert status == 503 and "unreadable: boom" in body["error"]["message"]
    status, body = await call(host, "DELETE", "apps/any")
    assert status == 503 and "unreadable: boom" in body["error"]["message"]


async def test_delete_removes_server_store_and_blobs(host) -> None:
    """DELETE: 202 with the deletion's id; it ends `deleted`; the server is stopped, its state, the store root
    and every blob of the app are gone; the app is 404 and no longer listed; other apps are untouched."""
    for app in ("doomed", "keeper"):
        status, started = await call(host, "POST", f"apps/{app}/provision")
        assert (await finished(host, started["id"]))["state"] == "provisioned"
        done = upload(host, app, "alpha", "1")
        went_live(host, app, done)
        serve(host, app, done)
    endpoint = host.platform.describe_app("doomed").endpoint
    assert requests.get(f"{endpoint}/health", timeout=5).ok
    host.devhost.worker.start_new("reconcile", "reconcile-doomed", json.dumps({"app": "doomed"}))
    for _ in range(100):  # its pass finds nothing open, heals nothing, then waits
        status, info = await call(host, "GET", "apps/doomed")
        if (info.get("reconciler") or {}).get("phase") == "idle":
            break
        await asyncio.sleep(0.1)
    assert info["reconciler"]["phase"] == "idle", info
    status, accepted = await call(host, "DELETE", "apps/doomed")
    assert status == 202 and accepted["id"].startswith("delete-doomed.") and accepted["status_url"].endswith(
        accepted["id"])
    record = await finished(host, accepted["id"])
    assert record["runtime_status"] == "Completed" and record["state"] == "deleted", record
    assert record["platform"] == "deleted" and record["store"] is True and record["blobs"] >= 4
    with pytest.raises(requests.RequestException):
        requests.get(f"{endpoint}/health", timeout=2)
    assert not (host.tmp / "platform" / "doomed.json").exists() and not (host.tmp / "store" / "doomed").exists()
    assert not host.svc.records.has_app("doomed")
    reconciler = host.devhost.store.get("reconcile-doomed")
    assert reconciler.status == "Terminated"  # nothing wakes it to bring the app back
    status, body = await call(host, "GET", "apps/doomed")
    assert status == 404, body
    assert (await call(host, "GET", "apps"))[1] == {"apps": ["keeper"]}
    status, info = await call(host, "GET", "apps/keeper")
    assert status == 200 and info["running"] and info["served"]["adapter"] == "alpha"
    assert (await call(host, "DELETE", "apps/doomed"))[0] == 404  # gone: nothing to delete again
    # the app can start a new life
    upload(host, "doomed", "beta", "2")
    status, info = await call(host, "GET", "apps/doomed")
    assert status == 200 and info["last_rollout"] is None


async def test_delete_is_refused_while_a_rollout_may_run(host) -> None:
    """An open deployment record: 409 naming it, nothing deleted, no deletion marker left behind."""
    done = upload(host, "busy", "alpha", "1")
    host.svc.records.ingest("busy")
    status, body = await call(host, "DELETE", "apps/busy")
    assert status == 409 and done.deployment_id in body["error"]["message"], body
    assert host.svc.records.deletion("busy") is None and host.svc.records.has_app("busy")
    host.svc.records.update("busy", done.deployment_id, {"stage": "failed", "reason": "x"})
    status, accepted = await call(host, "DELETE", "apps/busy")
    assert status == 202 and (await finished(host, accepted["id"]))["state"] == "deleted"


async def test_delete_is_refused_while_an_upload_is_under_way(host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written into an adapter folder with no marker after them (an upload in progress): 409 naming it; once
    the marker lands (or the files are older than UPLOAD_QUIET_S) the deletion goes ahead."""
    import orchestrations.lifecycle as lifecycle

    done = upload(host, "inflight", "alpha", "1")
    went_live(host, "inflight", done)
    container = host.svc.store.container
    container.upload_blob(host.svc.store.blob_name("inflight", "beta", "adapter_model.safetensors"), b"partial")
    status, body = await call(host, "DELETE", "apps/inflight")
    assert status == 409 and "upload into app 'inflight' is under way (beta" in body["error"]["message"], body
    assert host.svc.records.deletion("inflight") is None
    assert host.svc.store.uploads_in_flight("inflight", 600) == ["beta"]
    await asyncio.sleep(1.1)  # blob times are whole seconds: a re-upload's first file, a second after the marker
    container.upload_blob(host.svc.store.blob_name("inflight", "alpha", "notes.txt"), b"after the marker")
    assert host.svc.store.uploads_in_flight("inflight", 600) == ["alpha", "beta"]
    monkeypatch.setattr(lifecycle, "UPLOAD_QUIET_S", 0.0)  # an abandoned upload no longer holds it back
    status, accepted = await call(host, "DELETE", "apps/inflight")
    assert status == 202 and (await finished(host, accepted["id"]))["state"] == "deleted"


async def test_nothing_starts_an_app_while_it_is_being_deleted(host) -> None:
    """With the deletion marker: deploy and rollback requests are 409, provisioning ends failed (app_deleting),
    GET shows `deleting`; a second DELETE retries (a failed deletion leaves its marker)."""
    done = upload(host, "marked", "alpha", "1")
    went_live(host, "marked", done)
    host.svc.records.mark_deleting("marked", "delete-marked.20260101T000000000000")
    status, body = await call(host, "POST", "apps/marked/deployments", {"adapter": "alpha"})
    assert status == 409 and "being deleted" in body["error"]["message"]
    status, body = await call(host, "POST", "apps/marked/rollback", {"to": "alpha"})
    assert status == 409 and "being deleted" in body["error"]["message"]
    status, started = await call(host, "POST", "apps/marked/provision")
    outcome = await finished(host, started["id"])
    assert outcome["state"] == "failed" and "being deleted" in outcome["reason"]
    assert not host.platform.describe_app("marked").exists and host.svc.records.open_ids("marked") == []
    status, info = await call(host, "GET", "apps/marked")
    assert status == 200 and info["deleting"]["id"] == "delete-marked.20260101T000000000000"
    status, accepted = await call(host, "DELETE", "apps/marked")
    assert status == 202 and (await finished(host, accepted["id"]))["state"] == "deleted"
    assert (await call(host, "GET", "apps/marked"))[0] == 404
    assert host.woken == []


async def test_rollback_requests_the_previous_version(host) -> None:
    """Without `to`: the newest version live before the served one; `to` a version or an adapter name; each a
    deploy request with its own record (rollback_of / rollback_to) and the reconciler woken."""
    alpha = upload(host, "rb", "alpha", "1")
    alpha_v = went_live(host, "rb", alpha)
    beta = upload(host, "rb", "beta", "2")
    beta_v = went_live(host, "rb", beta)
    serve(host, "rb", beta)
    status, body = await call(host, "POST", "apps/rb/rollback")
    assert status == 202, body
    assert body["adapter"] == "alpha" and body["rollback_of"] == beta_v and body["rollback_to"] == alpha_v
    record = host.svc.records.get("rb", body["id"])
    assert record["source"] == "request" and record["sha256"] == alpha.sha256 and record["stage"] == "received"
    assert record["rollback_of"] == beta_v and host.woken == ["rb"]
    status, again = await call(host, "GET", f"deployments/{body['id']}")
    assert status == 200 and again["rollback_to"] == alpha_v
    status, body = await call(host, "POST", "apps/rb/rollback", {"to": beta_v})
    assert status == 202 and body["adapter"] == "beta" and body["rollback_to"] == beta_v
    status, body = await call(host, "POST", "apps/rb/rollback", {"to": "alpha"})
    assert status == 202 and body["adapter"] == "alpha" and body["rollback_to"] is None


async def test_rollback_refusals(host) -> None:
    """Nothing earlier: 404; an unknown version: 404 naming the known ones; a version whose adapter now holds
    other content: 404 saying so; bad `to`: 400. No record is made for any of them."""
    alpha = upload(host, "rbno", "alpha", "1")
    alpha_v = went_live(host, "rbno", alpha)
    serve(host, "rbno", alpha)
    status, body = await call(host, "POST", "apps/rbno/rollback", {})
    assert status == 404 and "no earlier live version" in body["error"]["message"]
    status, body = await call(host, "POST", "apps/rbno/rollback", {"to": "alpha@000000000000"})
    assert status == 404 and alpha_v in body["error"]["message"]
    beta = upload(host, "rbno", "beta", "2")
    went_live(host, "rbno", beta)
    serve(host, "rbno", beta)
    upload(host, "rbno", "alpha", "3")  # alpha re-uploaded: alpha_v's bytes are gone from the store
    status, body = await call(host, "POST", "apps/rbno/rollback", {})
    assert status == 404 and "that version's upload was replaced" in body["error"]["message"], body
    for bad in ({"to": 5}, {"to": ""}, {"to": "Bad Name"}):
        status, body = await call(host, "POST", "apps/rbno/rollback", bad)
        assert status == 400 and "'to'" in body["error"]["message"], (bad, body)
    async with host.http.post("/api/apps/rbno/rollback", data=b"[1") as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]["message"]
    assert [r for r in host.svc.records.recent("rbno") if r["source"] == "request"] == []
    assert host.woken == []




class _Client:
    """A Durable client that knows one reconciler's status."""

    def __init__(self, status) -> None:
        self.status = status

    async def get_status(self, instance_id: str):
        return self.status


async def test_busy_reconciler_phases(host) -> None:
    """A reconciler in a pass (checking, rolling out, just started) may roll out: busy; one that waits is not."""
    import azure.durable_functions as df

    def status(phase, runtime=df.OrchestrationRuntimeStatus.Running):
        return SimpleNamespace(runtime_status=runtime, custom_status={"phase": phase} if phase else None)

    for phase in ("checking", "rolling_out", None):
        assert "in a pass" in await lifecycle._busy(_Client(status(phase)), "quiet"), phase
    for phase in ("idle", "error", "waiting_retry"):
        assert await lifecycle._busy(_Client(status(phase)), "quiet") is None, phase
    assert await lifecycle._busy(_Client(status("checking", df.OrchestrationRuntimeStatus.Terminated)), "quiet") is None
    assert await lifecycle._busy(_Client(None), "quiet") is None


class _Sequence(_Client):
    """A reconciler whose successive statuses are given (the last one repeats)."""

    def __init__(self, *statuses) -> None:
        self.statuses = list(statuses)

    async def get_status(self, instance_id: str):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


async def test_delete_gives_a_heal_pass_time_to_end(host, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconciler in a pass with nothing open is waited for up to SETTLE_S; still in it after that: busy. Open
    records are busy at once (no wait)."""
    import azure.durable_functions as df

    def status(phase):
        return SimpleNamespace(runtime_status=df.OrchestrationRuntimeStatus.Running, custom_status={"phase": phase})

    monkeypatch.setattr(lifecycle, "SETTLE_S", 1.0)
    assert await lifecycle._settled(_Sequence(status("checking"), status("checking"), status("idle")), "quiet") is None
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert "in a pass (checking)" in await lifecycle._settled(_Sequence(status("checking")), "quiet")
    assert 0.9 < loop.time() - started < 3
    upload(host, "quiet", "alpha", "1")
    host.svc.records.ingest("quiet")
    started = loop.time()
    assert "not ended" in await lifecycle._settled(_Sequence(status("idle")), "quiet")
    assert loop.time() - started < 0.5


async def test_a_deletion_that_cannot_start_is_a_503_and_retried(host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Durable client failing to start the orchestration: 503 JSON saying to DELETE again; the marker stays
    (nothing starts the app); DELETE again deletes it."""
    import azure.durable_functions as df

    upload(host, "retry", "alpha", "1")
    real = df.DurableOrchestrationClient.start_new

    async def failing(self, *args, **kwargs):
        raise RuntimeError("task hub unavailable")

    monkeypatch.setattr(df.DurableOrchestrationClient, "start_new", failing)
    status, body = await call(host, "DELETE", "apps/retry")
    assert status == 503 and "DELETE it again" in body["error"]["message"], body
    assert host.svc.records.deletion("retry") is not None
    status, body = await call(host, "POST", "apps/retry/deployments", {"adapter": "alpha"})
    assert status == 409
    monkeypatch.setattr(df.DurableOrchestrationClient, "start_new", real)
    status, accepted = await call(host, "DELETE", "apps/retry")
    assert status == 202 and (await finished(host, accepted["id"]))["state"] == "deleted"
    assert (await call(host, "GET", "apps/retry"))[0] == 404


async def test_rollback_with_an_unreadable_manifest_uses_the_records(host) -> None:
    """A damaged manifest is no 500: the records say what was live (the newest live one counts as current)."""
    alpha = upload(host, "rbbad", "alpha", "1")
    alpha_v = went_live(host, "rbbad", alpha)
    beta = upload(host, "rbbad", "beta", "2")
    beta_v = went_live(host, "rbbad", beta)
    manifest = host.tmp / "store" / "rbbad" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    status, body = await call(host, "POST", "apps/rbbad/rollback")
    assert status == 202 and body["rollback_of"] == beta_v and body["rollback_to"] == alpha_v, body


async def test_policy_routes(host, monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET|PUT|DELETE /api/apps/{app}/policy`: 404 for an unknown app, 400 naming the field, the app's own policy
    stored and winning over the ROLLOUT_POLICY setting, removed again by DELETE."""
    monkeypatch.delenv("ROLLOUT_POLICY", raising=False)
    status, body = await call(host, "GET", "apps/ghost/policy")
    assert status == 404 and "ghost" in body["error"]["message"]
    upload(host, "pol", "alpha", "1")
    assert await call(host, "GET", "apps/pol/policy") == (200, {"app": "pol", "policy": None, "effective": None,
                                                               "source": "none"})
    status, body = await call(host, "PUT", "apps/pol/policy", {"canary": {"steps": [10, 60]}})
    assert status == 400 and "canary.steps must increase and end with 100" in body["error"]["message"]
    async with host.http.put("/api/apps/pol/policy", data=b"{nope") as resp:
        assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
    status, body = await call(host, "PUT", "apps/pol/policy", {"canary": {"steps": [25, 100], "hold_s": 5}})
    assert status == 200 and body["source"] == "app" and body["policy"]["canary"]["steps"] == [25, 100]
    monkeypatch.setenv("ROLLOUT_POLICY", json.dumps({"approval": {"required": True}}))
    status, body = await call(host, "GET", "apps/pol/policy")
    assert body["source"] == "app" and body["effective"]["canary"]["hold_s"] == 5.0
    status, body = await call(host, "DELETE", "apps/pol/policy")
    assert status == 200 and body["policy"] is None and body["source"] == "setting"
    assert body["effective"]["approval"]["required"] is True


async def test_decisions_reach_only_a_rollout_in_a_stage_that_takes_them(host) -> None:
    """`POST /api/deployments/{id}/{action}`: 404 unknown action or id, 409 naming the stage and what it takes,
    400 for a bad `by`, 202 and the `rollout_action` event delivered to the rollout's instance."""
    done = upload(host, "act", "alpha", "1")
    host.svc.records.ingest("act")
    rid = done.deployment_id
    status, body = await call(host, "POST", f"deployments/{rid}/launch")
    assert status == 404 and "unknown action 'launch'" in body["error"]["message"]
    status, body = await call(host, "POST", "deployments/act.20260101T000000000000-r000000/promote")
    assert status == 404
    status, body = await call(host, "POST", f"deployments/{rid}/promote")
    assert status == 409 and body["stage"] == "received" and body["accepts"] == []
    # a running instance stands in for the rollout (an idle reconciler of another app: it ignores the event)
    instance = "stand-in-rollout"
    host.devhost.worker.start_new("reconcile", instance, json.dumps({"app": "other"}))
    host.svc.records.update("act", rid, {"stage": "canary", "instance_id": instance})
    status, body = await call(host, "POST", f"deployments/{rid}/approve")
    assert status == 409 and body["accepts"] == ["promote", "abort"] and "is canary" in body["error"]["message"]
    status, body = await call(host, "POST", f"deployments/{rid}/abort", {"by": "x" * 101})
    assert status == 400
    status, body = await call(host, "POST", f"deployments/{rid}/abort", {"by": "ana"})
    assert status == 202 and body == {"id": rid, "action": "abort", "stage": "canary", "by": "ana"}
    raised: list[dict] = []
    for _ in range(100):
        raised = [json.loads(e["Input"]) for e in host.devhost.store.history(instance)
                  if e.get("Name") == "rollout_action"]
        if raised:
            break
        await asyncio.sleep(0.05)
    assert raised == [{"action": "abort", "by": "ana"}]
    status, body = await call(host, "POST", f"deployments/{rid}/promote")
    kept = host.svc.records.decisions("act", rid)  # what the rollout reads, oldest first
    assert [(d["action"], d["by"]) for d in kept] == [("abort", "ana"), ("promote", None)]
    assert all(d["at"] for d in kept)
    host.svc.records.update("act", rid, {"stage": "rolled_back"})
    status, body = await call(host, "POST", f"deployments/{rid}/abort")
    assert status == 409 and body["stage"] == "rolled_back"
