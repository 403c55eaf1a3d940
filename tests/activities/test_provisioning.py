"""Provisioning against the fake ARM over TLS, through the real storage, Log Analytics and Container Apps clients."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from activities.config import InferenceConfig, ProvisionParameters, Settings, WorkloadProfile
from activities.platform.aca import (
    ArmOperationFailedError,
    ArmRequestError,
    OperationStillRunningError,
    arm_errors,
)
from activities.platform.base import ADMIN_KEY_SECRET, AppSpec, PlatformError, TransientPlatformError
from activities.provisioning import (
    STEPS,
    FileShareRequest,
    MissingDependencyError,
    MissingSecretError,
    Provisioner,
    ProvisionPlan,
    StepResult,
    WorkloadProfileError,
)
from tests.fakes.fake_arm import FAST_CLIENT_CLOCK, FakeArm

SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-ft"
BASE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
API_KEY = "prov-api-key-value"
IDENTITIES = f"{BASE}/Microsoft.ManagedIdentity/userAssignedIdentities"
PULL_ID = f"{IDENTITIES}/id-adapters-pull"

CONFIG = InferenceConfig(
    subscription_id=SUB,
    resource_group_name=RG,
    storage_account_name="stfinetune001",
    file_share_name="finetune-share",
    aca_app_name="inference-app",
)
SETTINGS = Settings(
    base_model_name="tiny-llama",
    platform="aca",
    inference_image="example.azurecr.io/inference:1",
    inference_api_key=API_KEY,
    inference_registry_server="example.azurecr.io",
    inference_pull_identity_id=PULL_ID,
)
PARAMS = ProvisionParameters(default_commands=("python", "-m", "inference_server"), maximum_instance_count=2)


@pytest.fixture
def fake_arm(tmp_path: Path) -> Iterator[FakeArm]:
    # ARM's operations run through in-progress polls with Retry-After: 1; the clients sleep a hundredth of it
    with FakeArm.start(
        tmp_path, location="swedencentral", resource_groups=(RG,), client_time_scale=FAST_CLIENT_CLOCK
    ) as fake:
        yield fake
        assert fake.sdk_violations == []  # every body we sent is one the SDK's models allow


@pytest.fixture
def provisioner(fake_arm: FakeArm) -> Provisioner:
    arm = fake_arm.connection(SUB, RG)
    return Provisioner(arm, secrets={"inference-api-keys": API_KEY})


@pytest.fixture
def plan(provisioner: Provisioner) -> ProvisionPlan:
    return provisioner.plan(CONFIG, PARAMS, SETTINGS)


def test_plan_resolves_null_parameters(plan: ProvisionPlan) -> None:
    """Null names fall back to inference.config.json's resources, location to the resource group's."""
    assert plan.storage_account.account_name == "stfinetune001"
    assert plan.file_share.share_name == "finetune-share"
    assert plan.environment.environment_name == "inference-app-env"
    assert plan.environment_storage.storage_name == "finetune-share"
    assert plan.log_analytics.workspace_name == "inference-app-env-logs"
    assert plan.container_app.location == "swedencentral"
    assert plan.container_app.max_replicas == 2 and plan.container_app.command == (
        "python",
        "-m",
        "inference_server",
    )
    assert plan.container_app.secret_names == ("inference-api-keys",)
    assert plan.container_app.generated_secret_names == (ADMIN_KEY_SECRET,)
    assert plan.container_app.registry_server == "example.azurecr.io"
    assert plan.container_app.pull_identity_id == PULL_ID


def test_plan_round_trips_through_json(plan: ProvisionPlan) -> None:
    """The plan survives Durable's JSON (tuples, nested dataclasses) and holds no secret value."""
    text = json.dumps(plan.to_dict())
    assert API_KEY not in text
    assert ProvisionPlan.from_dict(json.loads(text)) == plan


def test_full_chain_creates_everything_once_then_writes_nothing(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """The first run creates each resource with one write; a second run only reads."""
    results = provisioner.provision_all(plan)
    assert [(r.step, r.action) for r in results] == [(s, "created") for s in STEPS]
    writes = [(r.method, r.path.split("/providers/")[1]) for r in fake_arm.writes()]
    assert writes == [
        ("PUT", "Microsoft.Storage/storageAccounts/stfinetune001"),
        ("PUT", "Microsoft.Storage/storageAccounts/stfinetune001/fileServices/default/shares/finetune-share"),
        ("PUT", "Microsoft.OperationalInsights/workspaces/inference-app-env-logs"),
        ("PUT", "Microsoft.App/managedEnvironments/inference-app-env"),
        ("PUT", "Microsoft.App/managedEnvironments/inference-app-env/storages/finetune-share"),
        ("PUT", "Microsoft.App/containerApps/inference-app"),
    ]
    outcome = results[-1].outcome
    assert outcome is not None and list(outcome) == list(InferenceConfig.KEYS.values())
    assert outcome["ACA_APP_ENDPOINT"] == "https://inference-app.fake-env.swedencentral.azurecontainerapps.io"
    assert set(fake_arm.api_versions) == {
        "microsoft.storage",
        "microsoft.operationalinsights",
        "microsoft.app",
        "fake.operations",
        "resources",
    }

    fake_arm.clear_log()
    again = provisioner.provision_all(plan)
    assert [r.action for r in again] == ["unchanged"] * len(STEPS)
    assert fake_arm.writes() == []
    assert again[-1].outcome == outcome
    posts = [r.path for r in fake_arm.log if r.method == "POST"]
    assert posts == []  # no keys are fetched when nothing has to be written


def test_environment_is_wired_to_the_workspace(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """The environment gets the workspace's customer id and shared key, and the GPU profile beside Consumption."""
    provisioner.provision_all(plan)
    env_put = next(r for r in fake_arm.writes() if r.path.endswith("managedEnvironments/inference-app-env"))
    logs = env_put.body["properties"]["appLogsConfiguration"]
    workspace = fake_arm.resource(f"{BASE}/Microsoft.OperationalInsights/workspaces/inference-app-env-logs")
    assert logs["destination"] == "log-analytics"
    assert logs["logAnalyticsConfiguration"]["customerId"] == workspace["properties"]["customerId"]
    assert logs["logAnalyticsConfiguration"]["sharedKey"]
    assert env_put.body["properties"]["workloadProfiles"] == [
        {"name": "Consumption", "workloadProfileType": "Consumption"},
        {"name": "NC8as-T4", "workloadProfileType": "Consumption-GPU-NC8as-T4"},
    ]
    storage_put = next(r for r in fake_arm.writes() if "/storages/" in r.path)
    assert storage_put.body["properties"]["azureFile"]["accountKey"]
    assert storage_put.body["properties"]["azureFile"]["shareName"] == "finetune-share"


ENV_PATH = f"{BASE}/Microsoft.App/managedEnvironments/inference-app-env"
APP_PATH = f"{BASE}/Microsoft.App/containerApps/inference-app"


def test_gpu_profile_is_not_added_to_an_existing_environment(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """Switching an existing environment to the A100 profile is refused before any write, saying what to do; ARM's
    fake refuses the same PATCH (a GPU profile only comes with a new environment)."""
    provisioner.provision_all(plan)
    a100 = WorkloadProfile("NC24-A100", "Consumption-GPU-NC24-A100")
    fake_arm.clear_log()
    with pytest.raises(WorkloadProfileError) as caught:
        provisioner.ensure_environment(replace(plan.environment, workload_profile=a100))
    message = str(caught.value)
    assert "only when an environment is created" in message
    assert "GPU_WORKLOAD_PROFILE to one it has (NC8as-T4 (Consumption-GPU-NC8as-T4))" in message
    assert "acaEnvironmentName" in message
    assert fake_arm.writes() == []
    env = fake_arm.resource(ENV_PATH)
    profiles = [*env["properties"]["workloadProfiles"], {"name": a100.name, "workloadProfileType": a100.type}]
    environments = provisioner._client("apps").managed_environments
    with pytest.raises(ArmRequestError) as refused, arm_errors("patch"):
        environments.begin_update(RG, "inference-app-env", {"properties": {"workloadProfiles": profiles}}).result()
    assert refused.value.code == "ManagedEnvironmentGpuProfileNotAllowed"


def test_step_failure_for_the_profile_is_permanent(provisioner: Provisioner, plan: ProvisionPlan) -> None:
    """The profile refusal is a PlatformError that is not transient (the orchestration ends with its message)."""
    provisioner.provision_all(plan)
    a100 = WorkloadProfile("NC24-A100", "Consumption-GPU-NC24-A100")
    moved = replace(plan, environment=replace(plan.environment, workload_profile=a100))
    with pytest.raises(PlatformError) as caught:
        provisioner.run_step("environment", moved)
    assert not isinstance(caught.value, TransientPlatformError)


def test_consumption_only_environment_is_refused(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """An existing Consumption-only environment (no workload profiles) cannot take the GPU profile: refused, no write."""
    for step in STEPS[:3]:
        provisioner.run_step(step, plan)
    fake_arm.put_resource(ENV_PATH, {"location": "swedencentral", "properties": {}})
    fake_arm.clear_log()
    with pytest.raises(WorkloadProfileError, match="Consumption-only environment .* acaEnvironmentName"):
        provisioner.run_step("environment", plan)
    assert fake_arm.writes() == []


CPU_SETTINGS = replace(SETTINGS, workload_profile=WorkloadProfile("Consumption", "Consumption"))


def test_cpu_target_runs_the_transformers_engine_on_the_consumption_profile(
    provisioner: Provisioner, fake_arm: FakeArm
) -> None:
    """INFERENCE_TARGET=cpu: the environment gets no GPU profile, and the app runs on its Consumption profile with the
    largest size ARM gives there (4 cores, 8 GiB), the transformers engine and no SGLang-only settings."""
    plan = provisioner.plan(CONFIG, PARAMS, CPU_SETTINGS)
    assert [r.action for r in provisioner.provision_all(plan)] == ["created"] * len(STEPS)
    environment = fake_arm.resource(ENV_PATH)["properties"]
    assert environment["workloadProfiles"] == [{"name": "Consumption", "workloadProfileType": "Consumption"}]
    app = fake_arm.resource(APP_PATH)["properties"]
    assert app["workloadProfileName"] == "Consumption"
    [container] = app["template"]["containers"]
    assert container["resources"] == {"cpu": 4.0, "memory": "8Gi"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["INFERENCE_ENGINE"] == "transformers"
    assert "INFERENCE_LORA_TARGET_MODULES" not in env and "INFERENCE_MAX_LORA_RANK" not in env
    assert [r.action for r in provisioner.provision_all(plan)] == ["unchanged"] * len(STEPS)


def test_fake_arm_refuses_a_size_the_consumption_profile_does_not_give(
    provisioner: Provisioner, fake_arm: FakeArm
) -> None:
    """As ARM does: on Consumption, cpu must total 0.25-4 cores with twice as many GiB (the fake is that strict)."""
    plan = provisioner.plan(CONFIG, PARAMS, CPU_SETTINGS)
    for step in STEPS[:-1]:
        provisioner.run_step(step, plan)
    platform = provisioner.platform(plan.container_app)
    platform.settings = replace(platform.settings, cpu=4.0, memory="16Gi")
    with pytest.raises(PlatformError, match="total requested CPU and memory resources .* is invalid"):
        platform.ensure_app(AppSpec(app="inference-app", image="example.azurecr.io/inference:1",
                                    secrets={"inference-api-keys": API_KEY}))
    assert fake_arm.resource(APP_PATH) is None


def test_shared_environment_with_our_profile_is_updated_and_keeps_others(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """An environment someone else created with our GPU profile and a dedicated one: only the logs wiring is patched,
    every profile kept."""
    for step in STEPS[:3]:
        provisioner.run_step(step, plan)
    profiles = [
        {"name": "Consumption", "workloadProfileType": "Consumption"},
        {"name": "NC8as-T4", "workloadProfileType": "Consumption-GPU-NC8as-T4"},
        {"name": "d4", "workloadProfileType": "D4", "minimumCount": 0, "maximumCount": 2},
    ]
    fake_arm.put_resource(ENV_PATH, {"location": "swedencentral", "properties": {"workloadProfiles": profiles}})
    fake_arm.clear_log()
    assert provisioner.run_step("environment", plan).action == "updated"
    assert [r.method for r in fake_arm.writes()] == ["PATCH"]
    assert [p["name"] for p in fake_arm.resource(ENV_PATH)["properties"]["workloadProfiles"]] == [
        "Consumption",
        "NC8as-T4",
        "d4",
    ]
    assert provisioner.run_step("environment", plan).action == "unchanged"


def test_each_resource_type_polls_the_way_arm_does(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """Storage account, workspace and environment PUTs are polled on Location, the container app PUT on
    Azure-AsyncOperation, each through in-progress polls with Retry-After: 1; share and environment storage are
    synchronous."""
    provisioner.provision_all(plan)
    headers = {r.path.rsplit("/", 1)[-1]: (r.status, r.response_headers) for r in fake_arm.writes()}
    assert headers["stfinetune001"][0] == 202 and "Location" in headers["stfinetune001"][1]
    assert headers["inference-app-env-logs"][0] == 202 and "Location" in headers["inference-app-env-logs"][1]
    assert headers["inference-app-env"][0] == 201 and "Location" in headers["inference-app-env"][1]
    assert headers["inference-app"][0] == 201 and "Azure-AsyncOperation" in headers["inference-app"][1]
    for name in ("stfinetune001", "inference-app-env-logs", "inference-app-env", "inference-app"):
        assert headers[name][1]["Retry-After"] == "1"
    assert headers["finetune-share"] == (201, {})
    polls = fake_arm.operation_polls()
    assert len(polls) == 4 * (fake_arm.in_progress_polls + 1)
    assert sum("/operations/" in r.path for r in polls) == fake_arm.in_progress_polls + 1


def test_environment_creation_outlasting_the_budget_is_waited_for_on_retry(
    fake_arm: FakeArm, plan: ProvisionPlan
) -> None:
    """An environment still initialising at the end of the step's budget ends the step (transient); the retried step
    waits for it instead of writing again, then finds it created."""
    arm = replace(fake_arm.connection(SUB, RG), operation_budget_s=0.4)
    provisioner = Provisioner(arm, secrets={"inference-api-keys": API_KEY})
    for step in STEPS[:3]:
        provisioner.run_step(step, plan)
    fake_arm.in_progress_polls = 10**6
    with pytest.raises(OperationStillRunningError):
        provisioner.run_step("environment", plan)
    with pytest.raises(OperationStillRunningError, match="InitializationInProgress"):
        provisioner.run_step("environment", plan)
    fake_arm.in_progress_polls = 0
    for _ in range(100):
        if fake_arm.resource(ENV_PATH)["properties"]["provisioningState"] == "Succeeded":
            break
        time.sleep(0.02)
    assert provisioner.run_step("environment", plan).action == "unchanged"
    env_writes = [r for r in fake_arm.writes() if r.path.endswith("inference-app-env")]
    assert [r.method for r in env_writes] == ["PUT"]


def test_existing_resources_are_reused_by_name(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """A larger existing share is left alone; a smaller one is grown with a PATCH."""
    provisioner.ensure_storage_account(plan.storage_account)
    assert provisioner.ensure_file_share(replace(plan.file_share, quota_gib=100)).action == "created"
    fake_arm.clear_log()
    assert provisioner.ensure_file_share(replace(plan.file_share, quota_gib=50)).action == "unchanged"
    assert (
        provisioner.ensure_file_share(FileShareRequest("stfinetune001", "finetune-share", 200)).action
        == "updated"
    )
    assert [r.method for r in fake_arm.writes()] == ["PATCH"]


def test_changed_image_updates_only_the_app(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """A new image in the plan rewrites the container app and nothing else."""
    provisioner.provision_all(plan)
    fake_arm.clear_log()
    new_plan = replace(
        plan, container_app=replace(plan.container_app, image="example.azurecr.io/inference:2")
    )
    results = provisioner.provision_all(new_plan)
    assert [r.action for r in results] == ["unchanged"] * 5 + ["updated"]
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_arm.writes()] == [("PATCH", "inference-app")]


def test_container_app_pulls_from_the_private_registry(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """The app is created with the plan's registry and pull identity; a new registry updates only the app."""
    provisioner.provision_all(plan)
    app_put = next(r for r in fake_arm.writes() if r.path.endswith("containerApps/inference-app"))
    assert app_put.body["identity"]["userAssignedIdentities"] == {PULL_ID: {}}
    assert app_put.body["properties"]["configuration"]["registries"] == [
        {"server": "example.azurecr.io", "identity": PULL_ID}
    ]
    fake_arm.clear_log()
    moved = replace(
        plan,
        container_app=replace(
            plan.container_app, registry_server="other.azurecr.io", pull_identity_id=f"{IDENTITIES}/id-other"
        ),
    )
    assert [r.action for r in provisioner.provision_all(moved)] == ["unchanged"] * 5 + ["updated"]
    (patch,) = fake_arm.writes()
    assert patch.body["properties"]["configuration"]["registries"] == [
        {"server": "other.azurecr.io", "identity": f"{IDENTITIES}/id-other"}
    ]


def test_public_image_plan_has_no_registry(provisioner: Provisioner, fake_arm: FakeArm) -> None:
    """A public image plans no registry or identity, and the app is created without them."""
    public = replace(
        SETTINGS, inference_image="ghcr.io/org/inference:1", inference_registry_server="", inference_pull_identity_id=""
    )
    plan = provisioner.plan(CONFIG, PARAMS, public)
    assert plan.container_app.registry_server == "" and plan.container_app.pull_identity_id == ""
    for step in STEPS:
        provisioner.run_step(step, plan)
    app_put = fake_arm.writes()[-1]
    assert "identity" not in app_put.body
    assert app_put.body["properties"]["configuration"]["registries"] == []


def test_throttled_step_then_succeeds(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """A 429 on the storage account PUT is transient with retry_after; rerunning the step creates it once."""
    fake_arm.fail_next("PUT", "storageaccounts/stfinetune001", 429, retry_after="0")
    with pytest.raises(TransientPlatformError) as caught:
        provisioner.run_step("storage_account", plan)
    assert caught.value.retry_after == 0
    assert provisioner.run_step("storage_account", plan).action == "created"


def test_failed_environment_operation_carries_arm_message(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """A failed environment creation raises PlatformError with ARM's message; the next run writes again."""
    for step in STEPS[:3]:
        provisioner.run_step(step, plan)
    fake_arm.fail_operation(
        "managedenvironments/inference-app-env", "WorkloadProfileQuotaExceeded", "No GPU quota."
    )
    with pytest.raises(ArmOperationFailedError, match="No GPU quota"):
        provisioner.run_step("environment", plan)
    assert provisioner.run_step("environment", plan).action == "updated"


def test_missing_secret_value_is_refused(fake_arm: FakeArm, plan: ProvisionPlan) -> None:
    """A plan naming a secret the provisioner cannot resolve fails before any write."""
    arm = fake_arm.connection(SUB, RG)
    with pytest.raises(KeyError):
        Provisioner(arm).ensure_container_app(plan.container_app)
    with pytest.raises(MissingSecretError):
        Provisioner(arm).ensure_container_app(plan.container_app)
    assert fake_arm.writes() == []


def test_app_without_api_key_is_refused(provisioner: Provisioner, fake_arm: FakeArm) -> None:
    """Settings without INFERENCE_API_KEY plan no key secret; the container app step then refuses to write."""
    plan = provisioner.plan(CONFIG, PARAMS, replace(SETTINGS, inference_api_key=""))
    for step in STEPS[:-1]:
        provisioner.run_step(step, plan)
    fake_arm.clear_log()
    with pytest.raises(PlatformError, match="ingress is public and it has no API key"):
        provisioner.run_step("container_app", plan)
    assert fake_arm.writes() == []


def test_container_app_gets_a_generated_admin_key(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """The app's admin key is a generated secret, different from the chat key, exposed as INFERENCE_ADMIN_KEY."""
    provisioner.provision_all(plan)
    app_path = f"{BASE}/Microsoft.App/containerApps/inference-app"
    values = fake_arm.secret_values(app_path)
    assert set(values) == {"inference-api-keys", ADMIN_KEY_SECRET}
    assert values["inference-api-keys"] == API_KEY and values[ADMIN_KEY_SECRET] != API_KEY
    env = fake_arm.resource(app_path)["properties"]["template"]["containers"][0]["env"]
    assert {"name": "INFERENCE_ADMIN_KEY", "secretRef": ADMIN_KEY_SECRET} in env


def test_step_result_round_trips() -> None:
    """StepResult survives JSON as Durable passes it."""
    result = StepResult(step="file_share", name="s", action="created")
    assert StepResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_unknown_step_is_refused(provisioner: Provisioner, plan: ProvisionPlan) -> None:
    """run_step names the valid steps when given an unknown one."""
    with pytest.raises(ValueError, match="storage_account"):
        provisioner.run_step("dns", plan)


def test_keys_never_reach_the_logs(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm, caplog: pytest.LogCaptureFixture
) -> None:
    """The workspace shared key, the storage account key and the API key are sent to ARM but never logged."""
    caplog.set_level("DEBUG")
    results = provisioner.provision_all(plan)
    bodies = {r.path.rsplit("/", 1)[-1]: r.body for r in fake_arm.writes()}
    shared_key = bodies["inference-app-env"]["properties"]["appLogsConfiguration"][
        "logAnalyticsConfiguration"
    ]["sharedKey"]
    account_key = bodies["finetune-share"]["properties"]["azureFile"]["accountKey"]
    for secret in (shared_key, account_key, API_KEY):
        assert secret not in caplog.text
        assert all(secret not in json.dumps(r.to_dict()) for r in results)
    assert "provisioning container_app inference-app: created" in caplog.text


def test_container_app_step_reports_endpoint(provisioner: Provisioner, plan: ProvisionPlan) -> None:
    """ensure_container_app alone reports the endpoint; run_step adds the inference.config.json outcome."""
    for step in STEPS[:-1]:
        provisioner.run_step(step, plan)
    result = provisioner.ensure_container_app(plan.container_app)
    assert result.endpoint == "https://inference-app.fake-env.swedencentral.azurecontainerapps.io"
    assert result.outcome is None
    state = provisioner.platform(plan.container_app).describe_app("inference-app")
    assert state.endpoint == result.endpoint and state.running


def test_environment_before_workspace_is_refused(
    provisioner: Provisioner, plan: ProvisionPlan, fake_arm: FakeArm
) -> None:
    """Running the environment step before its workspace exists raises MissingDependencyError and writes nothing."""
    with pytest.raises(MissingDependencyError, match="run log_analytics first"):
        provisioner.run_step("environment", plan)
    assert fake_arm.writes() == []
