"""The provision and restart orchestrations of `function_app` on devhost, PLATFORM=aca, with the real management
clients against the loopback fake ARM over TLS: every resource created once, a second run writes nothing,
throttling is retried, a failed long-running operation ends the run with ARM's message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
from tests.fakes.fake_arm import FakeArm

SUB, RG, APP = "00000000-0000-0000-0000-000000000009", "rg-inference", "inference-app"


@pytest.fixture
async def aca_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[DevHost, FakeArm]]:
    """function_app on devhost whose activities use an ACA platform wired to the fake ARM."""
    with FakeArm.start(tmp_path, location="swedencentral", resource_groups=(RG,)) as fake:
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
        monkeypatch.setattr(activity_functions, "services", lambda: svc)
        host = DevHost(function_app.app, state_dir=tmp_path / "durable", port=0)
        await host.start()
        try:
            yield host, fake
        finally:
            await host.stop()


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
