"""The provision and restart orchestrations of `function_app` on devhost, PLATFORM=aca, with the real management
clients against the loopback fake ARM over TLS: every resource created once, a second run writes nothing,
throttling is retried, a failed long-running operation ends the run with ARM's message, an operation outlasting a
step's budget is waited for across the orchestrator's retries, and a GPU profile ARM would refuse ends the run with
what to do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

import function_app
from activities import functions as activity_functions
from activities.adapter_store import AdapterStore, BlobStoreSettings, LocalFolderTarget
from activities.apps import AcaApps
from activities.config import InferenceConfig, Settings
from activities.provisioning import STEPS, Provisioner
from activities.records import DeploymentRecords
from activities.services import Services
from devhost.host import DevHost
from tests.fakes.fake_arm import FAST_CLIENT_CLOCK, FakeArm

SUB, RG, APP = "00000000-0000-0000-0000-000000000009", "rg-inference", "inference-app"


@pytest.fixture
async def aca_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[DevHost, FakeArm]]:
    """function_app on devhost whose activities use an ACA platform wired to the fake ARM."""
    with FakeArm.start(tmp_path, location="swedencentral", resource_groups=(RG,), client_time_scale=FAST_CLIENT_CLOCK) as fake:
        config = InferenceConfig(subscription_id=SUB, resource_group_name=RG, storage_account_name="stfinetune009",
                                 file_share_name="finetune", aca_app_name=APP)
        config_path = tmp_path / "inference.config.json"
        config_path.write_text(json.dumps(config.to_dict()))
        params_path = tmp_path / "inference.parameters.json"
        params_path.write_text(json.dumps({"parameters": {"maximumInstanceCount": {"value": 2}}}))
        settings = Settings(base_model_name="tiny-llama", platform="aca", inference_image="mcr.microsoft.com/x:1",
                            inference_api_key="k-123", inference_config_path=str(config_path),
                            parameters_path=str(params_path))
        arm = fake.connection(SUB, RG)
        apps = AcaApps(settings, Provisioner(arm, secrets={"inference-api-keys": settings.inference_api_key}))
        store = AdapterStore(BlobStoreSettings(connection_string="UseDevelopmentStorage=true"))
        svc = Services(settings, store, LocalFolderTarget(tmp_path / "store"), apps, DeploymentRecords(store))
        monkeypatch.setattr(svc.records, "deletion", lambda app: None)  # no blob store here: no app is being deleted
        monkeypatch.setattr(activity_functions, "services", lambda: svc)
        host = DevHost(function_app.app, state_dir=tmp_path / "durable", port=0)
        await host.start()
        try:
            yield host, fake
        finally:
            await host.stop()
        assert fake.sdk_violations == []  # every body sent is one the SDK's models allow


async def run(host: DevHost, name: str, instance_id: str) -> dict:
    host.worker.start_new(name, instance_id, json.dumps({"app": APP}))
    record = await host.worker.wait_for(instance_id, timeout=120)
    return json.loads(record.output_json)


async def test_provision_creates_everything_once_then_writes_nothing(aca_host) -> None:
    """First run creates each resource and reports the endpoint; the second run finds nothing to change."""
    host, fake = aca_host
    first = await run(host, "provision", "p1")
    assert first["state"] == "provisioned", first
    assert [s["step"] for s in first["steps"]] == list(STEPS)
    assert {s["action"] for s in first["steps"]} == {"created"}
    assert first["inference_config"]["ACA_APP_ENDPOINT"].startswith("https://")
    assert first["inference_config"]["ACA_APP_NAME"] == APP and first["inference_config"]["SUBSCRIPTION_ID"] == SUB
    state = activity_functions.services().apps.describe(APP)
    status_shape = activity_functions.services().apps.inference_config(APP, state)
    assert status_shape == first["inference_config"]  # what GET /api/apps/{app} reports
    fake.clear_log()
    second = await run(host, "provision", "p2")
    assert {s["action"] for s in second["steps"]} == {"unchanged"}
    assert fake.writes() == []


async def test_provisioned_app_lists_its_revisions_replicas(aca_host) -> None:
    """The activities' `apps.list_replicas` reads the serving revision's replicas from ARM (the gate's list)."""
    host, fake = aca_host
    assert activity_functions.services().apps.list_replicas(APP) == []  # no app yet
    assert (await run(host, "provision", "p-replicas"))["state"] == "provisioned"
    app_path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/containerApps/{APP}"
    revision = activity_functions.services().apps.describe(APP).revision
    listed = activity_functions.services().apps.list_replicas(APP)
    assert listed and listed == sorted(r["name"] for r in fake.replicas(app_path, revision))
    assert all(name.startswith(f"{revision}-") for name in listed)


async def test_throttling_is_retried_by_the_orchestration(aca_host) -> None:
    """A 429 on the container app is retried (Retry-After honoured) and the run still succeeds."""
    host, fake = aca_host
    fake.fail_next("GET", f"containerApps/{APP}", 429, retry_after="0")
    out = await run(host, "provision", "p3")
    assert out["state"] == "provisioned", out
    assert sum(1 for r in fake.log if r.method == "GET" and f"containerapps/{APP}" in r.path.lower()) >= 2


async def test_failed_long_running_operation_ends_with_arms_message(aca_host) -> None:
    """An environment PUT whose operation fails ends the run `failed` with ARM's code and message."""
    host, fake = aca_host
    fake.fail_operation("managedEnvironments", "ManagedEnvironmentProvisioningError", "GPU quota exceeded in region")
    out = await run(host, "provision", "p4")
    assert out["state"] == "failed" and "GPU quota exceeded" in out["reason"], out
    assert [s["step"] for s in out["steps"]][-1] == "environment"


async def test_operations_outlasting_a_step_are_waited_for_across_retries(aca_host) -> None:
    """Each long-running operation takes longer than a step's budget: the step ends transient, the orchestrator's
    retry waits for the operation in flight, and every resource is still written exactly once."""
    host, fake = aca_host
    provisioner = activity_functions.services().apps.provisioner
    provisioner.arm = replace(provisioner.arm, operation_budget_s=0.3)
    fake.in_progress_polls = 40  # about 0.6 s of polls (Retry-After 1 s on the tests' 1/100 clock)
    out = await run(host, "provision", "p5")
    assert out["state"] == "provisioned", out
    puts = [r.path.lower() for r in fake.writes() if r.method == "PUT"]
    assert len(puts) == len(set(puts)) == len(STEPS), puts
    account_reads = [r for r in fake.log if r.method == "GET" and r.path.lower().endswith("/stfinetune009")]
    assert len(account_reads) >= 2  # the storage account step ran again after its budget ran out
    assert not [r for r in fake.log if r.status == 409]  # nothing was written over an operation in flight


async def test_existing_environment_without_the_gpu_profile_ends_the_run(aca_host) -> None:
    """An existing environment without our GPU profile: the run ends failed at the environment step, saying what to
    do, and the environment is not written."""
    host, fake = aca_host
    env_path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/managedEnvironments/{APP}-env"
    profiles = [{"name": "Consumption", "workloadProfileType": "Consumption"},
                {"name": "NC24-A100", "workloadProfileType": "Consumption-GPU-NC24-A100"}]
    fake.put_resource(env_path, {"location": "swedencentral", "properties": {"workloadProfiles": profiles}})
    out = await run(host, "provision", "p6")
    assert out["state"] == "failed" and [s["step"] for s in out["steps"]][-1] == "environment", out
    assert "only when an environment is created" in out["reason"] and "acaEnvironmentName" in out["reason"]
    assert not [r for r in fake.writes() if r.path.lower().endswith(f"managedenvironments/{APP}-env")]


async def test_delete_orchestration_deletes_the_container_app_only(aca_host, monkeypatch: pytest.MonkeyPatch) -> None:
    """After provisioning, the delete orchestration deletes the container app (ARM's long-running DELETE) and
    nothing else: the account, share, workspace, environment and its storage stay. Again: nothing to delete."""
    host, fake = aca_host
    swept: list[str] = []
    records = activity_functions.services().records
    monkeypatch.setattr(records, "delete_app", lambda app: swept.append(app) or 0)  # blobs: tests/activities
    assert (await run(host, "provision", "p7"))["state"] == "provisioned"
    fake.clear_log()
    out = await run(host, "delete", "d1")
    assert out == {"app": APP, "state": "deleted", "platform": "deleted", "store": False, "blobs": 0}, out
    # the only write: the container app's DELETE (the shared resources are not touched)
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake.writes()] == [("DELETE", APP)]
    app_path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/containerApps/{APP}"
    assert fake.resource(app_path) is None
    env_path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/managedEnvironments/{APP}-env"
    assert fake.resource(env_path) is not None
    assert swept == [APP]
    fake.clear_log()
    assert (await run(host, "delete", "d2"))["platform"] == "absent"
    assert fake.writes() == []


async def test_failed_delete_ends_failed_with_arms_message(aca_host, monkeypatch: pytest.MonkeyPatch) -> None:
    """ARM failing the DELETE operation ends the orchestration `failed` with ARM's message; nothing else removed."""
    host, fake = aca_host
    records = activity_functions.services().records
    monkeypatch.setattr(records, "delete_app", lambda app: pytest.fail("blobs removed after a failed delete"))
    assert (await run(host, "provision", "p8"))["state"] == "provisioned"
    fake.fail_operation(f"containerapps/{APP}", "ContainerAppDeleteFailed", "Could not delete the container app")
    out = await run(host, "delete", "d3")
    assert out["state"] == "failed" and "Could not delete the container app" in out["reason"], out
    assert "DELETE it again" in out["reason"]
