"""AcaPlatform against the fake ARM over TLS, through the real ContainerAppsAPIClient."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from activities.config import WorkloadProfile
from activities.platform.aca import (
    PROBE_RANGES,
    AcaPlatform,
    AcaSettings,
    AppNotFoundError,
    ArmConnection,
    ArmOperationFailedError,
    ArmRequestError,
    InvalidAppNameError,
    OperationStillRunningError,
    app_body,
)
from activities.platform.base import ADMIN_KEY_SECRET, AppSpec, PlatformError, TransientPlatformError
from tests.fakes import fake_arm as fake_arm_module
from tests.fakes.fake_arm import FAST_CLIENT_CLOCK, FakeArm

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-test"
APP_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/containerApps/chat"
REGISTRY = "example.azurecr.io"
IDENTITIES = f"/subscriptions/{SUB}/resourceGroups/rg-adapters/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
PULL_ID = f"{IDENTITIES}/id-adapters-pull"


@pytest.fixture
def fake_arm(tmp_path: Path) -> Iterator[FakeArm]:
    # ARM's operations run through in-progress polls with Retry-After: 1; the clients sleep a hundredth of it
    with FakeArm.start(tmp_path, resource_groups=(RG,), client_time_scale=FAST_CLIENT_CLOCK) as fake:
        yield fake
        assert fake.sdk_violations == []  # every body we sent is one the SDK's models allow


@pytest.fixture
def platform(fake_arm: FakeArm) -> AcaPlatform:
    arm = fake_arm.connection(SUB, RG)
    settings = AcaSettings(
        arm=arm,
        environment_name="env-ft",
        location="westus3",
        storage_name="adapters-share",
        workload_profile=WorkloadProfile("NC8as-T4", "Consumption-GPU-NC8as-T4"),
    )
    return AcaPlatform(settings)


@pytest.fixture
def private(platform: AcaPlatform) -> AcaPlatform:
    """The same platform pulling from the private registry with the pull identity."""
    return _pulling(platform, REGISTRY, PULL_ID)


def _pulling(platform: AcaPlatform, server: str, identity: str) -> AcaPlatform:
    return AcaPlatform(replace(platform.settings, registry_server=server, pull_identity_id=identity))


SPEC = AppSpec(
    app="chat",
    image="example.azurecr.io/inference:1",
    command=["python", "-m", "inference_server"],
    base_model="tiny-llama",
    min_replicas=0,
    max_replicas=2,
    env={"INFERENCE_MODEL_PATH": "/mnt/adapters/models/base"},
    secrets={"inference-api-keys": "s3cret-value"},
)


def test_creates_app_when_missing(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A missing app is created with one PUT carrying image, volume, probes, ingress, scale and secret refs."""
    result = platform.ensure_app(SPEC)
    assert result.changed
    assert (
        result.state.exists and result.state.endpoint == "https://chat.fake-env.westus3.azurecontainerapps.io"
    )
    assert result.state.revision == "chat--r001" and result.state.replicas == 1 and result.state.running
    puts = [r for r in fake_arm.writes() if r.method == "PUT"]
    assert len(puts) == 1
    props = puts[0].body["properties"]
    container = props["template"]["containers"][0]
    assert container["image"] == SPEC.image and container["command"] == SPEC.command
    assert {"name": "INFERENCE_API_KEYS", "secretRef": "inference-api-keys"} in container["env"]
    assert {"name": "INFERENCE_BASE_MODEL_NAME", "value": "tiny-llama"} in container["env"]
    assert container["volumeMounts"] == [{"volumeName": "adapters", "mountPath": "/mnt/adapters"}]
    assert {p["type"]: p["httpGet"]["path"] for p in container["probes"]} == {
        "Liveness": "/health",
        "Readiness": "/ready",
        "Startup": "/health",
    }
    assert container["resources"] == {"cpu": 8.0, "memory": "56Gi"}
    assert props["template"]["volumes"] == [
        {"name": "adapters", "storageType": "AzureFile", "storageName": "adapters-share"}
    ]
    assert props["template"]["scale"] == {"minReplicas": 0, "maxReplicas": 2}
    assert props["configuration"]["ingress"]["external"] is True
    assert props["configuration"]["ingress"]["targetPort"] == 8000
    assert props["workloadProfileName"] == "NC8as-T4"
    assert fake_arm.secret_values(APP_PATH) == {"inference-api-keys": "s3cret-value"}
    (version,) = fake_arm.api_versions["microsoft.app"]  # one api-version, the SDK's own, on every call
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", version)


def test_no_write_when_nothing_changed(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A second ensure with the same spec only reads: no PUT or PATCH reaches ARM."""
    platform.ensure_app(SPEC)
    fake_arm.clear_log()
    result = platform.ensure_app(SPEC)
    assert not result.changed
    assert fake_arm.writes() == []
    assert result.state.revision == "chat--r001"


def test_updates_changed_fields_with_a_patch(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A new image is one PATCH; ACA cuts a new revision, and fields we do not own survive."""
    platform.ensure_app(SPEC)
    stored = fake_arm.resource(APP_PATH)
    assert stored is not None
    fake_arm.clear_log()
    result = platform.ensure_app(replace(SPEC, image="example.azurecr.io/inference:2"))
    assert result.changed and result.state.image == "example.azurecr.io/inference:2"
    assert [r.method for r in fake_arm.writes()] == ["PATCH"]
    assert result.state.revision == "chat--r002"
    assert fake_arm.secret_values(APP_PATH) == {"inference-api-keys": "s3cret-value"}


def test_scale_change_is_an_update(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """Changing max replicas (maximumInstanceCount) is detected and written."""
    platform.ensure_app(SPEC)
    result = platform.ensure_app(replace(SPEC, max_replicas=3))
    assert result.changed
    assert fake_arm.resource(APP_PATH)["properties"]["template"]["scale"]["maxReplicas"] == 3


def test_removed_secret_is_an_update(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """Secrets are compared by name: dropping one rewrites the app."""
    platform.ensure_app(replace(SPEC, secrets={**SPEC.secrets, "other": "x"}))
    result = platform.ensure_app(SPEC)
    assert result.changed
    secrets = fake_arm.resource(APP_PATH)["properties"]["configuration"]["secrets"]
    assert [s["name"] for s in secrets] == ["inference-api-keys"]


@pytest.mark.parametrize("key", [None, "", "  "])
def test_public_app_without_api_key_is_refused(platform: AcaPlatform, fake_arm: FakeArm, key: str | None) -> None:
    """The ingress is public: no chat key (missing or blank) means no create and no update, before any ARM call."""
    keyless = replace(SPEC, secrets={} if key is None else {"inference-api-keys": key})
    with pytest.raises(PlatformError, match="public and it has no API key"):
        platform.ensure_app(keyless)
    assert fake_arm.log == []
    platform.ensure_app(SPEC)
    fake_arm.clear_log()
    with pytest.raises(PlatformError, match="no API key"):
        platform.ensure_app(replace(keyless, image="example.azurecr.io/inference:2"))
    assert fake_arm.writes() == []


def test_admin_key_is_generated_kept_and_never_a_chat_key(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """The admin key is a generated secret (env INFERENCE_ADMIN_KEY), unlike the chat key, kept across updates."""
    spec = replace(SPEC, secrets={"inference-api-keys": "chat-a,chat-b"}, generated_secrets=(ADMIN_KEY_SECRET,))
    platform.ensure_app(spec)
    (put,) = fake_arm.writes()
    container = put.body["properties"]["template"]["containers"][0]
    assert {"name": "INFERENCE_ADMIN_KEY", "secretRef": ADMIN_KEY_SECRET} in container["env"]
    admin = fake_arm.secret_values(APP_PATH)[ADMIN_KEY_SECRET]
    assert len(admin) >= 32 and admin not in ("chat-a", "chat-b", "chat-a,chat-b")
    fake_arm.clear_log()
    assert not platform.ensure_app(spec).changed
    assert [r.method for r in fake_arm.log] == ["GET", "GET"]  # no listSecrets when nothing is written
    result = platform.ensure_app(replace(spec, image="example.azurecr.io/inference:2"))
    assert result.changed and fake_arm.secret_values(APP_PATH)[ADMIN_KEY_SECRET] == admin
    assert any(r.method == "POST" and r.path.endswith("/listSecrets") for r in fake_arm.log)


def test_existing_app_gets_an_admin_key(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """An app created without an admin key gets one with the next ensure: a new revision carries it."""
    platform.ensure_app(SPEC)
    result = platform.ensure_app(replace(SPEC, generated_secrets=(ADMIN_KEY_SECRET,)))
    assert result.changed and result.state.revision == "chat--r002"
    assert set(fake_arm.secret_values(APP_PATH)) == {"inference-api-keys", ADMIN_KEY_SECRET}


def test_private_registry_app_is_created_with_the_pull_identity(
    private: AcaPlatform, fake_arm: FakeArm
) -> None:
    """The PUT assigns the pull identity, pulls the registry with it and keeps it from the containers' code."""
    result = private.ensure_app(SPEC)
    assert result.changed and result.state.running
    (put,) = fake_arm.writes()
    assert put.body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {PULL_ID: {}}}
    config = put.body["properties"]["configuration"]
    assert config["registries"] == [{"server": REGISTRY, "identity": PULL_ID}]
    assert config["identitySettings"] == [{"identity": PULL_ID, "lifecycle": "None"}]
    stored = fake_arm.resource(APP_PATH)
    assert stored["identity"]["userAssignedIdentities"][PULL_ID]["principalId"]
    assert stored["properties"]["configuration"]["registries"][0]["server"] == REGISTRY


def test_unchanged_private_app_is_not_written(private: AcaPlatform, fake_arm: FakeArm) -> None:
    """Registry and identity read back as sent (ARM's extra fields, any id casing): a second ensure only reads."""
    private.ensure_app(SPEC)
    fake_arm.clear_log()
    assert not private.ensure_app(SPEC).changed
    assert not _pulling(private, REGISTRY.upper(), PULL_ID.lower()).ensure_app(SPEC).changed
    assert fake_arm.writes() == []


def test_registry_change_is_an_update(private: AcaPlatform, fake_arm: FakeArm) -> None:
    """Another registry and identity is one PATCH: the new registry entry; the old identity stays code-unusable."""
    private.ensure_app(SPEC)
    fake_arm.clear_log()
    other_id = f"{IDENTITIES}/id-other-pull"
    result = _pulling(private, "other.azurecr.io", other_id).ensure_app(
        replace(SPEC, image="other.azurecr.io/i:1")
    )
    assert result.changed and result.state.image == "other.azurecr.io/i:1"
    (patch,) = fake_arm.writes()
    assert patch.method == "PATCH"
    assert patch.body["identity"]["userAssignedIdentities"] == {other_id: {}}
    config = fake_arm.resource(APP_PATH)["properties"]["configuration"]
    assert [(r["server"], r["identity"]) for r in config["registries"]] == [("other.azurecr.io", other_id)]
    assert {s["identity"]: s["lifecycle"] for s in config["identitySettings"]} == {
        other_id: "None",
        PULL_ID: "None",
    }


def test_public_image_has_no_registry_or_identity(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """Without a registry the app gets no identity and an empty registry list."""
    platform.ensure_app(replace(SPEC, image="ghcr.io/org/inference:1"))
    (put,) = fake_arm.writes()
    assert "identity" not in put.body
    assert put.body["properties"]["configuration"]["registries"] == []
    assert "identitySettings" not in put.body["properties"]["configuration"]


def test_moving_to_a_public_image_clears_the_registry(
    private: AcaPlatform, platform: AcaPlatform, fake_arm: FakeArm
) -> None:
    """Dropping the registry removes its entry; the identity stays assigned but unusable by the code."""
    private.ensure_app(SPEC)
    assert platform.ensure_app(replace(SPEC, image="ghcr.io/org/inference:1")).changed
    stored = fake_arm.resource(APP_PATH)
    assert stored["properties"]["configuration"]["registries"] == []
    assert stored["properties"]["configuration"]["identitySettings"] == [
        {"identity": PULL_ID, "lifecycle": "None"}
    ]
    assert PULL_ID in stored["identity"]["userAssignedIdentities"]


def test_identities_others_assigned_survive(
    platform: AcaPlatform, private: AcaPlatform, fake_arm: FakeArm
) -> None:
    """Adding the pull identity keeps a system-assigned identity and another identity (with its settings)."""
    platform.ensure_app(SPEC)
    other_id = f"{IDENTITIES}/id-telemetry"
    others = {
        "identity": {"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {other_id: {}}},
        "properties": {"configuration": {"identitySettings": [{"identity": other_id, "lifecycle": "Main"}]}},
    }
    platform.client.container_apps.begin_update(RG, "chat", others).result()
    assert private.ensure_app(SPEC).changed
    stored = fake_arm.resource(APP_PATH)
    assert stored["identity"]["type"] == "SystemAssigned,UserAssigned"
    assert set(stored["identity"]["userAssignedIdentities"]) == {other_id, PULL_ID}
    settings = {
        s["identity"]: s["lifecycle"] for s in stored["properties"]["configuration"]["identitySettings"]
    }
    assert settings == {other_id: "Main", PULL_ID: "None"}
    fake_arm.clear_log()
    assert not private.ensure_app(SPEC).changed
    assert fake_arm.writes() == []


def test_describe_missing_app(platform: AcaPlatform) -> None:
    """A missing app is reported as not existing, not as an error."""
    state = platform.describe_app("nope")
    assert not state.exists and state.endpoint is None


def test_restart_restarts_latest_revision(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """restart_app restarts the latest revision's replicas without writing the app."""
    platform.ensure_app(SPEC)
    fake_arm.clear_log()
    state = platform.restart_app("chat")
    assert fake_arm.restarts == ["chat--r001"]
    assert state.revision == "chat--r001"
    assert fake_arm.writes() == []


def test_restart_missing_app_raises_not_found(platform: AcaPlatform) -> None:
    """Restarting an app that does not exist raises AppNotFoundError, also a LookupError."""
    with pytest.raises(LookupError):
        platform.restart_app("nope")
    with pytest.raises(AppNotFoundError):
        platform.restart_app("nope")


def test_throttled_then_succeeds(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """ARM 429 surfaces at once as TransientPlatformError with retry_after; the next call succeeds."""
    fake_arm.fail_next("GET", "/containerapps/chat", 429, retry_after="7")
    with pytest.raises(TransientPlatformError) as caught:
        platform.ensure_app(SPEC)
    assert caught.value.retry_after == 7
    assert "TooManyRequests" in str(caught.value)
    assert len(fake_arm.log) == 1  # the SDK did not retry by itself
    assert platform.ensure_app(SPEC).changed


def test_server_error_then_succeeds(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """ARM 500 on the PUT is transient; retrying the activity creates the app once."""
    fake_arm.fail_next("PUT", "/containerapps/chat", 500, message="backend hiccup")
    with pytest.raises(TransientPlatformError, match="backend hiccup"):
        platform.ensure_app(SPEC)
    result = platform.ensure_app(SPEC)
    assert result.changed and result.state.exists
    assert len([r for r in fake_arm.log if r.method == "PUT" and r.status == 201]) == 1


def test_failed_operation_raises_with_arm_message(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A long-running operation ending Failed raises PlatformError (not transient) with ARM's code and message."""
    fake_arm.fail_operation("/containerapps/chat", "ContainerAppImagePullFailed", "Failed to pull image 'x'.")
    with pytest.raises(ArmOperationFailedError) as caught:
        platform.ensure_app(SPEC)
    assert not isinstance(caught.value, TransientPlatformError)
    assert "ContainerAppImagePullFailed" in str(caught.value) and "Failed to pull image 'x'." in str(
        caught.value
    )
    # the app is left Failed: the next ensure writes again even though the spec matches
    assert platform.ensure_app(SPEC).changed


def test_bad_request_is_permanent(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A 4xx other than 429 raises ArmRequestError with ARM's code, a PlatformError that is not transient."""
    fake_arm.fail_next("PUT", "/containerapps/chat", 400, code="InvalidParameterValue", message="bad cpu")
    with pytest.raises(ArmRequestError) as caught:
        platform.ensure_app(SPEC)
    assert isinstance(caught.value, PlatformError) and not isinstance(caught.value, TransientPlatformError)
    assert caught.value.code == "InvalidParameterValue" and caught.value.status == 400


def test_secret_values_stay_out_of_logs(
    platform: AcaPlatform, fake_arm: FakeArm, caplog: pytest.LogCaptureFixture
) -> None:
    """Creating and updating an app never logs a secret value, even with azure-core logging at DEBUG."""
    caplog.set_level("DEBUG")
    spec = replace(SPEC, generated_secrets=(ADMIN_KEY_SECRET,))
    platform.ensure_app(spec)
    platform.ensure_app(replace(spec, image="example.azurecr.io/inference:3"))
    assert "s3cret-value" not in caplog.text
    assert fake_arm.secret_values(APP_PATH)[ADMIN_KEY_SECRET] not in caplog.text


def test_settings_validate_themselves(platform: AcaPlatform) -> None:
    """A dedicated profile without cpu/memory, or a registry without a pull identity, is refused when built."""
    with pytest.raises(ValueError, match="cpu/memory"):
        replace(platform.settings, workload_profile=WorkloadProfile("gpu", "NC96-A100", 0, 1))
    with pytest.raises(ValueError, match="pull_identity_id"):
        replace(platform.settings, registry_server=REGISTRY)


def test_read_timeout_is_transient(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A request ARM does not answer in time surfaces as TransientPlatformError; the retry succeeds."""
    slow = AcaPlatform(replace(platform.settings, arm=replace(platform.settings.arm, read_timeout=0.2)))
    fake_arm.stall_next("GET", "/containerapps/chat", 1.0)
    with pytest.raises(TransientPlatformError, match="Timeout|timed out"):
        slow.describe_app("chat")
    assert not slow.describe_app("chat").exists


def test_connection_refused_is_transient(platform: AcaPlatform) -> None:
    """Nothing listening at the ARM endpoint is a TransientPlatformError, not a crash."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    arm = replace(platform.settings.arm, base_url=f"https://127.0.0.1:{port}")
    with pytest.raises(TransientPlatformError):
        AcaPlatform(replace(platform.settings, arm=arm)).describe_app("chat")


# --- heal --------------------------------------------------------------------------------------------------------


def test_heal_restarts_a_revision_with_no_running_replica(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """minReplicas 1 and the latest revision down to 0 replicas: heal restarts it, then finds it running."""
    platform.ensure_app(replace(SPEC, min_replicas=1))
    assert platform.heal_app("chat") == {"action": "none"}
    fake_arm.set_revision(APP_PATH, "chat--r001", replicas=0)
    fake_arm.clear_log()
    healed = platform.heal_app("chat")
    assert healed == {"action": "restarted", "reason": "revision chat--r001 has no running replica (runningState Running)"}
    assert fake_arm.restarts == ["chat--r001"] and fake_arm.writes() == []
    assert platform.heal_app("chat") == {"action": "none"}
    assert fake_arm.restarts == ["chat--r001"]


@pytest.mark.parametrize("running_state", ["Failed", "Degraded"])
def test_heal_restarts_a_failed_revision(platform: AcaPlatform, fake_arm: FakeArm, running_state: str) -> None:
    """A Failed or Degraded latest revision is restarted even with replicas reported."""
    platform.ensure_app(replace(SPEC, min_replicas=1))
    fake_arm.set_revision(APP_PATH, "chat--r001", runningState=running_state)
    healed = platform.heal_app("chat")
    assert healed == {"action": "restarted", "reason": f"revision chat--r001 is {running_state}"}
    assert fake_arm.restarts == ["chat--r001"]


@pytest.mark.parametrize(
    ("min_replicas", "properties"),
    [
        (0, {"replicas": 0}),  # scale to zero: no replica is normal
        (1, {"replicas": 0, "runningState": "Processing"}),  # still starting
        (1, {"replicas": 0, "active": False, "runningState": "Stopped"}),  # deactivated on purpose
    ],
)
def test_heal_leaves_apps_that_need_nothing(
    platform: AcaPlatform, fake_arm: FakeArm, min_replicas: int, properties: dict
) -> None:
    """Scaled to zero, a revision still starting, a deactivated revision and a missing app: no restart."""
    platform.ensure_app(replace(SPEC, min_replicas=min_replicas))
    fake_arm.set_revision(APP_PATH, "chat--r001", **properties)
    assert platform.heal_app("chat") == {"action": "none"}
    assert platform.heal_app("nope") == {"action": "none"}
    assert fake_arm.restarts == []


# --- what ARM refuses, what the SDK allows, long-running operations -----------------------------------------------


def test_probes_are_within_the_ranges_arm_documents(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """Every probe field we send is inside the spec's range (initialDelaySeconds >= 1); ARM's fake takes them."""
    assert PROBE_RANGES == fake_arm_module.PROBE_RANGES
    probes = app_body(platform.settings, SPEC)["properties"]["template"]["containers"][0]["probes"]
    assert {p["type"]: p["initialDelaySeconds"] for p in probes} == {"Liveness": 1, "Readiness": 1, "Startup": 60}
    for probe in probes:
        for name, (low, high) in PROBE_RANGES.items():
            assert probe.get(name, low) in range(low, high + 1), (probe["type"], name)
    assert platform.ensure_app(SPEC).changed


def test_probe_ranges_match_the_sdks_own_documentation() -> None:
    """The SDK states the ranges only in prose (no client-side validation in this TypeSpec-generated SDK); they
    must say what PROBE_RANGES says."""
    from azure.mgmt.appcontainers.models import ContainerAppProbe

    doc = " ".join((ContainerAppProbe.__doc__ or "").split())
    names = {"initialDelaySeconds": "initial_delay_seconds", "periodSeconds": "period_seconds",
             "timeoutSeconds": "timeout_seconds", "failureThreshold": "failure_threshold",
             "successThreshold": "success_threshold"}
    for field_name, attr in names.items():
        found = re.search(rf":ivar {attr}:.*?Minimum value is (\d+)\. Maximum value is (\d+)\.", doc)
        assert found, attr
        assert (int(found[1]), int(found[2])) == PROBE_RANGES[field_name]
    assert "Must be 1 for liveness and startup" in doc


@pytest.mark.parametrize(
    ("probe_type", "field_name", "value"),
    [
        ("Liveness", "initialDelaySeconds", 0),
        ("Startup", "initialDelaySeconds", 61),
        ("Readiness", "periodSeconds", 241),
        ("Readiness", "timeoutSeconds", 0),
        ("Liveness", "failureThreshold", 11),
        ("Readiness", "successThreshold", 11),
        ("Liveness", "successThreshold", 2),
    ],
)
def test_arm_refuses_probes_out_of_range(
    platform: AcaPlatform, fake_arm: FakeArm, probe_type: str, field_name: str, value: int
) -> None:
    """The fake refuses each probe field outside the spec's range, as ARM does (the old initialDelaySeconds 0)."""
    body = app_body(platform.settings, SPEC, {})
    probe = next(p for p in body["properties"]["template"]["containers"][0]["probes"] if p["type"] == probe_type)
    probe[field_name] = value
    with pytest.raises(ArmRequestError) as caught, arm_call("create"):
        platform.client.container_apps.begin_create_or_update(RG, "chat", body).result()
    assert caught.value.status == 400 and caught.value.code == "ContainerAppInvalidProbe"
    assert field_name in str(caught.value)
    assert fake_arm.resource(APP_PATH) is None


def arm_call(action: str):
    from activities.platform.aca import arm_errors

    return arm_errors(action)


@pytest.mark.parametrize("name", ["a", "1chat", "Chat", "chat-", "-chat", "chat--two", "c" * 33, "chat_two"])
def test_invalid_app_names_are_refused_before_arm_and_by_arm(
    platform: AcaPlatform, fake_arm: FakeArm, name: str
) -> None:
    """A name ARM refuses is refused before any request, saying the rule; ARM's fake refuses it too."""
    with pytest.raises(InvalidAppNameError, match="2-32 lowercase letters") as caught:
        platform.ensure_app(replace(SPEC, app=name))
    assert isinstance(caught.value, PlatformError) and not isinstance(caught.value, TransientPlatformError)
    assert fake_arm.log == []
    body = app_body(platform.settings, replace(SPEC, app=name), {})
    with pytest.raises(ArmRequestError) as refused, arm_call("create"):
        platform.client.container_apps.begin_create_or_update(RG, name, body).result()
    assert refused.value.code == "ContainerAppInvalidName"


@pytest.mark.parametrize("name", ["ab", "chat-2", "a" * 32])
def test_valid_app_names_pass(platform: AcaPlatform, name: str) -> None:
    assert platform.ensure_app(replace(SPEC, app=name)).changed


def test_bodies_the_sdk_models_refuse_fail(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """An unknown field, a wrong JSON type or a read-only field in a body fails with the path of the fault."""
    body = app_body(platform.settings, SPEC, {})
    container = body["properties"]["template"]["containers"][0]
    container["probes"][0]["initialDelaySeconds"] = "1"
    container["imagePullPolicy"] = "Always"
    body["properties"]["latestRevisionName"] = "x"
    with pytest.raises(ArmRequestError) as caught, arm_call("create"):
        platform.client.container_apps.begin_create_or_update(RG, "chat", body).result()
    assert caught.value.code == "FakeArmSdkSchemaViolation"
    violations = fake_arm.take_sdk_violations()
    assert any("/probes/0/initialDelaySeconds: '1' is not int" in v for v in violations)
    assert any("/containers/0/imagePullPolicy: not a field of Container" in v for v in violations)
    assert any("/properties/latestRevisionName: read-only" in v for v in violations)


def test_create_and_update_poll_through_in_progress_states(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """The PUT is polled on Azure-AsyncOperation, the PATCH on Location, each through InProgress polls, sleeping the
    Retry-After ARM sent (1 s) between polls."""
    platform.ensure_app(SPEC)
    put = next(r for r in fake_arm.writes() if r.method == "PUT")
    assert put.status == 201 and "Azure-AsyncOperation" in put.response_headers
    assert put.response_headers["Retry-After"] == "1"
    polls = fake_arm.operation_polls()
    assert len(polls) == fake_arm.in_progress_polls + 1 and all("/operations/" in r.path for r in polls)
    assert fake_arm.client_sleeps.count(1.0) >= fake_arm.in_progress_polls
    assert fake_arm.resource(APP_PATH)["properties"]["provisioningState"] == "Succeeded"
    fake_arm.clear_log()
    platform.ensure_app(replace(SPEC, image="example.azurecr.io/inference:2"))
    (patch,) = fake_arm.writes()
    assert patch.status == 202 and "Location" in patch.response_headers
    polls = fake_arm.operation_polls()
    assert len(polls) == fake_arm.in_progress_polls + 1 and all("/locations/" in r.path for r in polls)


def test_failed_patch_operation_raises_with_arm_message(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A PATCH whose Location operation fails raises ArmOperationFailedError with ARM's message."""
    platform.ensure_app(SPEC)
    fake_arm.fail_operation("/containerapps/chat", "ContainerAppImagePullFailed", "Failed to pull image 'y'.")
    with pytest.raises(ArmOperationFailedError, match="Failed to pull image 'y'"):
        platform.ensure_app(replace(SPEC, image="example.azurecr.io/inference:9"))
    assert fake_arm.resource(APP_PATH)["properties"]["provisioningState"] == "Failed"


def test_long_operation_is_bounded_then_waited_for(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """An operation outlasting the call's budget ends the call (transient) without waiting on; the next call waits
    for the operation in flight, writing nothing over it, and finds the app done."""
    fake_arm.in_progress_polls = 10**6  # ARM keeps working
    arm = replace(platform.settings.arm, operation_budget_s=0.5)
    bounded = AcaPlatform(replace(platform.settings, arm=arm))
    started = time.monotonic()
    with pytest.raises(OperationStillRunningError) as caught:
        bounded.ensure_app(SPEC)
    assert isinstance(caught.value, TransientPlatformError) and caught.value.retry_after is None
    assert time.monotonic() - started < 3
    assert [r.method for r in fake_arm.writes()] == ["PUT"]
    with pytest.raises(OperationStillRunningError, match="InProgress"):
        bounded.ensure_app(SPEC)  # the retry waits on the app in flight: no second write
    assert [r.method for r in fake_arm.writes()] == ["PUT"]
    fake_arm.in_progress_polls = 0  # ARM finishes at its next poll
    deadline = time.monotonic() + 5
    while fake_arm.resource(APP_PATH)["properties"]["provisioningState"] != "Succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    result = bounded.ensure_app(SPEC)
    assert not result.changed and result.state.running
    assert [r.method for r in fake_arm.writes()] == ["PUT"]


def test_write_during_an_operation_is_a_transient_conflict(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """ARM answers 409 ContainerAppOperationInProgress to a write while an operation runs: transient."""
    fake_arm.in_progress_polls = 10**6
    arm = replace(platform.settings.arm, operation_budget_s=0.2)
    with pytest.raises(OperationStillRunningError):
        AcaPlatform(replace(platform.settings, arm=arm)).ensure_app(SPEC)
    with pytest.raises(TransientPlatformError, match="ContainerAppOperationInProgress"), arm_call("update"):
        platform.client.container_apps.begin_update(RG, "chat", {"tags": {"x": "y"}}).result()
    fake_arm.in_progress_polls = 0


def test_operation_budget_fits_inside_function_timeout() -> None:
    """One activity's waits on ARM (budget, plus a read before and after) end before host.json's functionTimeout."""
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    function_timeout = hours * 3600 + minutes * 60 + seconds
    arm = ArmConnection("sub", "rg")
    assert arm.operation_budget_s + 2 * arm.read_timeout < function_timeout
    assert arm.operation_budget_s >= 60  # long enough for an app update; environments go on across retries


# -- delete_app: ARM's long-running DELETE (202 + Location, polled through `Deleting`), 204 for nothing --------
ENV_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/managedEnvironments/env-ft"


def test_delete_removes_the_app_through_the_long_running_operation(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """DELETE answers 202 + Location; the client polls it through `Deleting` (sleeping ARM's Retry-After) until the
    app is gone: describe says it does not exist, revisions and secrets go with it."""
    platform.ensure_app(SPEC)
    fake_arm.put_resource(ENV_PATH, {"location": "westus3", "properties": {"workloadProfiles": []}})
    fake_arm.clear_log()
    assert platform.delete_app("chat") is True
    (delete,) = fake_arm.writes()
    assert delete.method == "DELETE" and delete.status == 202 and "Location" in delete.response_headers
    polls = fake_arm.operation_polls()
    assert len(polls) == fake_arm.in_progress_polls + 1 and all("/locations/" in r.path for r in polls)
    assert polls[-1].status == 204
    assert fake_arm.resource(APP_PATH) is None and fake_arm.revisions(APP_PATH) == []
    assert not platform.describe_app("chat").exists
    assert fake_arm.resource(ENV_PATH) is not None  # the shared environment stays
    assert [r.path for r in fake_arm.writes()] == [delete.path]  # nothing else was written


def test_delete_of_a_missing_app_writes_nothing(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """An app that is not there: False, no DELETE sent (ARM would answer 204)."""
    assert platform.delete_app("chat") is False
    assert fake_arm.writes() == []


def test_fake_arm_answers_204_to_delete_of_nothing(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """The SDK's own begin_delete on a missing app ends at once (ARM's 204), as the real service does."""
    platform.client.container_apps.begin_delete(RG, "ghost").result()
    (delete,) = fake_arm.writes()
    assert delete.status == 204 and fake_arm.operation_polls() == []


def test_delete_waits_for_an_operation_in_flight(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """An app still being created is waited for (never deleted under ARM's feet), within the call's budget; a
    DELETE sent anyway while it runs is ARM's 409, transient."""
    fake_arm.in_progress_polls = 10**6
    arm = replace(platform.settings.arm, operation_budget_s=0.3)
    bounded = AcaPlatform(replace(platform.settings, arm=arm))
    with pytest.raises(OperationStillRunningError):
        bounded.ensure_app(SPEC)
    with pytest.raises(OperationStillRunningError, match="InProgress"):
        bounded.delete_app("chat")
    assert [r.method for r in fake_arm.writes()] == ["PUT"]
    with pytest.raises(TransientPlatformError, match="ContainerAppOperationInProgress"):
        with arm_call("delete"):
            platform.client.container_apps.begin_delete(RG, "chat").result()
    fake_arm.in_progress_polls = 0
    deadline = time.monotonic() + 5
    while fake_arm.resource(APP_PATH)["properties"]["provisioningState"] != "Succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert platform.delete_app("chat") is True and fake_arm.resource(APP_PATH) is None


def test_failed_delete_raises_with_arm_message(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A DELETE whose operation fails raises ArmOperationFailedError with ARM's message; the app stays (Failed)."""
    platform.ensure_app(SPEC)
    fake_arm.fail_operation("/containerapps/chat", "ContainerAppDeleteFailed", "Could not delete the app.")
    with pytest.raises(ArmOperationFailedError, match="Could not delete the app"):
        platform.delete_app("chat")
    assert fake_arm.resource(APP_PATH)["properties"]["provisioningState"] == "Failed"
    assert platform.delete_app("chat") is True  # deleting again works


REPLICA_NAME = re.compile(r"^chat--r00\d-[0-9a-f]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def test_list_replicas_names_the_running_replicas_of_the_serving_revision(
    platform: AcaPlatform, fake_arm: FakeArm
) -> None:
    """One replica per minReplicas, named as ACA names them, read through `revisions/{rev}/replicas`."""
    platform.ensure_app(replace(SPEC, min_replicas=2))
    fake_arm.clear_log()
    names = platform.list_replicas("chat")
    assert len(names) == 2 and all(REPLICA_NAME.match(n) for n in names), names
    assert names == sorted(r["name"] for r in fake_arm.replicas(APP_PATH, "chat--r001"))
    assert [(r.method, r.path.rsplit("/", 3)[-3:]) for r in fake_arm.log][-1] == (
        "GET", ["revisions", "chat--r001", "replicas"])
    one = platform.client.container_apps_revision_replicas.get_replica(RG, "chat", "chat--r001", names[0]).as_dict()
    assert one["properties"]["runningState"] == "Running"
    assert [c["name"] for c in one["properties"]["containers"]] == ["inference"]


def test_list_replicas_follows_scale_out_crashes_and_scale_in(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """Only replicas whose runningState is Running are listed; the revision's count follows the fake's changes."""
    platform.ensure_app(SPEC)
    (first,) = platform.list_replicas("chat")
    added = fake_arm.add_replica(APP_PATH, "chat--r001")
    assert platform.list_replicas("chat") == sorted([first, added])
    fake_arm.set_replica(APP_PATH, "chat--r001", added, "NotRunning")
    assert platform.list_replicas("chat") == [first]
    fake_arm.remove_replica(APP_PATH, "chat--r001", first)
    assert platform.list_replicas("chat") == []
    assert platform.describe_app("chat").replicas == 1  # the one not running yet


def test_list_replicas_of_a_new_revision_and_after_a_restart(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """A template change cuts a new revision: only its replicas are listed (the old one has none); a restart
    replaces the replicas (new names)."""
    platform.ensure_app(SPEC)
    old = platform.list_replicas("chat")
    platform.ensure_app(replace(SPEC, image="example.azurecr.io/inference:2"))
    new = platform.list_replicas("chat")
    assert len(new) == 1 and new[0].startswith("chat--r002-") and fake_arm.replicas(APP_PATH, "chat--r001") == []
    platform.restart_app("chat")
    restarted = platform.list_replicas("chat")
    assert len(restarted) == 1 and restarted != new and not set(old) & set(restarted)


def test_list_replicas_of_a_missing_app_or_revision(platform: AcaPlatform, fake_arm: FakeArm) -> None:
    """No app: nothing listed; ARM's 404 for a revision that is gone is nothing too; other faults raise."""
    assert platform.list_replicas("nope") == []
    platform.ensure_app(SPEC)
    fake_arm.fail_next("GET", "/revisions/chat--r001/replicas", status=404, code="ContainerAppRevisionNotFound")
    assert platform.list_replicas("chat") == []
    fake_arm.fail_next("GET", "/revisions/chat--r001/replicas", status=400, code="BadRequest")
    with pytest.raises(ArmRequestError):
        platform.list_replicas("chat")
