"""Settings: the template's inference.config.json / inference.parameters.json as they are, and app settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activities.config import (
    ConfigError,
    InferenceConfig,
    ProvisionParameters,
    Settings,
    WorkloadProfile,
    write_inference_config,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_CONFIG = {
    "SUBSCRIPTION_ID": "11111111-2222-3333-4444-555555555555",
    "RESOURCE_GROUP_NAME": "rg-ft",
    "STORAGE_ACCOUNT_NAME": "stft001",
    "FILE_SHARE_NAME": "ft-share",
    "ACA_APP_NAME": "inference-app",
    "ACA_APP_ENDPOINT": "",
}
MINIMAL_ENV = {"BASE_MODEL_NAME": "microsoft/Phi-3-mini-4k-instruct"}
ACA_ENV = {**MINIMAL_ENV, "PLATFORM": "aca", "INFERENCE_API_KEY": "chat-key-123"}
PULL_IDENTITY = (
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-adapters"
    "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-adapters-pull"
)


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_example_files_load() -> None:
    """The example files under infra/ are in the template's shape and load as they are."""
    config = InferenceConfig.load(REPO / "infra" / "inference.config.json")
    params = ProvisionParameters.load(REPO / "infra" / "provision" / "inference.parameters.json")
    assert config.aca_app_endpoint == ""
    assert params.maximum_instance_count == 1 and params.default_commands
    assert params.location is None and params.aca_environment_name is None


def test_inference_config_reads_template_keys(tmp_path: Path) -> None:
    """Every template key maps to its field."""
    config = InferenceConfig.load(_write(tmp_path / "c.json", TEMPLATE_CONFIG))
    assert config == InferenceConfig(
        "11111111-2222-3333-4444-555555555555", "rg-ft", "stft001", "ft-share", "inference-app"
    )


def test_missing_key_names_key_and_file(tmp_path: Path) -> None:
    """A missing key raises ConfigError (a ValueError) naming the key and the file."""
    path = _write(tmp_path / "c.json", {k: v for k, v in TEMPLATE_CONFIG.items() if k != "FILE_SHARE_NAME"})
    with pytest.raises(ValueError) as caught:
        InferenceConfig.load(path)
    assert isinstance(caught.value, ConfigError)
    assert caught.value.key == "FILE_SHARE_NAME" and caught.value.source == str(path)
    assert "FILE_SHARE_NAME" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("STORAGE_ACCOUNT_NAME", "Has-Caps"),
        ("ACA_APP_NAME", "-bad"),
        ("ACA_APP_ENDPOINT", "http://x"),
        ("RESOURCE_GROUP_NAME", 3),
    ],
)
def test_invalid_value_is_refused(tmp_path: Path, key: str, value: object) -> None:
    """Invalid names, a non-https endpoint or a non-string value raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match=key):
        InferenceConfig.load(_write(tmp_path / "c.json", {**TEMPLATE_CONFIG, key: value}))


def test_unreadable_files_raise_config_error(tmp_path: Path) -> None:
    """A missing file or broken JSON is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="not found"):
        InferenceConfig.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.json"):
        ProvisionParameters.load(broken)


def test_inference_config_from_app_settings() -> None:
    """The same keys are read from app settings when the file is not deployed."""
    assert InferenceConfig.from_env(TEMPLATE_CONFIG).aca_app_name == "inference-app"
    with pytest.raises(ConfigError, match="SUBSCRIPTION_ID in environment"):
        InferenceConfig.from_env({})


def test_write_inference_config_in_template_shape(tmp_path: Path) -> None:
    """The written file has exactly the template's keys, in order, with the endpoint, and reloads equal."""
    target = tmp_path / "infra" / "inference.config.json"
    config = InferenceConfig.from_dict(TEMPLATE_CONFIG).with_endpoint(
        "https://app.example.azurecontainerapps.io"
    )
    write_inference_config(target, config)
    data = json.loads(target.read_text(encoding="utf-8"))
    assert list(data) == list(TEMPLATE_CONFIG)
    assert data["ACA_APP_ENDPOINT"] == "https://app.example.azurecontainerapps.io"
    assert InferenceConfig.load(target) == config
    assert [p.name for p in target.parent.iterdir()] == ["inference.config.json"]  # no temp file left


def test_parameters_values_and_nulls(tmp_path: Path) -> None:
    """`parameters.<name>.value` is read as is; null and absent parameters mean the default (None)."""
    data = {
        "parameters": {
            "defaultCommands": {"value": ["python", "-m", "inference_server"]},
            "maximumInstanceCount": {"value": 3},
            "location": {"value": "westus3"},
            "acaEnvironmentName": {"value": "my-env"},
            "acaEnvironmentStorageName": {"value": None},
            "somethingElse": {"value": 1},
        }
    }
    params = ProvisionParameters.load(_write(tmp_path / "p.json", data))
    assert params.default_commands == ("python", "-m", "inference_server")
    assert params.maximum_instance_count == 3 and params.location == "westus3"
    assert params.aca_environment_name == "my-env"
    assert params.aca_environment_storage_name is None and params.storage_account_name is None
    assert ProvisionParameters.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("maximumInstanceCount", "2"),
        ("maximumInstanceCount", 0),
        ("defaultCommands", "python app.py"),
        ("storageAccountName", "Not_Valid"),
        ("location", 5),
    ],
)
def test_invalid_parameter_names_its_path(tmp_path: Path, name: str, value: object) -> None:
    """A wrongly typed parameter raises ConfigError naming `parameters.<name>.value` and the file."""
    path = _write(tmp_path / "p.json", {"parameters": {name: {"value": value}}})
    with pytest.raises(ConfigError) as caught:
        ProvisionParameters.load(path)
    assert caught.value.key == f"parameters.{name}.value" and caught.value.source == str(path)


def test_parameters_shape_is_checked(tmp_path: Path) -> None:
    """No `parameters` object, or an entry without `value`, is refused."""
    with pytest.raises(ConfigError, match="parameters"):
        ProvisionParameters.load(_write(tmp_path / "p.json", {"maximumInstanceCount": 1}))
    with pytest.raises(ConfigError, match="parameters.location.value"):
        ProvisionParameters.load(_write(tmp_path / "q.json", {"parameters": {"location": "westus3"}}))


def test_settings_defaults_from_minimal_env() -> None:
    """Only BASE_MODEL_NAME is required for the local platform; the rest has documented defaults."""
    settings = Settings.from_env(MINIMAL_ENV)
    assert settings.platform == "local" and settings.max_lora_rank == 64
    assert settings.workload_profile == WorkloadProfile("NC8as-T4", "Consumption-GPU-NC8as-T4")
    assert "q_proj" in settings.allowed_target_modules
    with pytest.raises(ConfigError, match="BASE_MODEL_NAME"):
        Settings.from_env({})


def test_settings_reads_app_settings() -> None:
    """Every documented app setting is read and parsed."""
    env = {
        **ACA_ENV,
        "PLATFORM": "ACA",
        "INFERENCE_IMAGE": "example.azurecr.io/inference:1",
        "INFERENCE_REGISTRY_SERVER": "Example.azurecr.io",
        "INFERENCE_PULL_IDENTITY_ID": PULL_IDENTITY,
        "MODEL_PATH": "/mnt/adapters/models/phi3",
        "GPU_WORKLOAD_PROFILE": "Consumption-GPU-NC24-A100",
        "MAX_LORA_RANK": "16",
        "ALLOWED_TARGET_MODULES": "qkv_proj, o_proj",
        "MAX_ADAPTER_MB": "100",
        "ADAPTERS_CONTAINER": "uploads",
        "ADAPTERS_ACCOUNT_URL": "https://st.blob.core.windows.net",
        "ARM_ENDPOINT": "https://127.0.0.1:9999",
    }
    settings = Settings.from_env(env)
    assert settings.platform == "aca" and settings.model_path == "/mnt/adapters/models/phi3"
    assert settings.workload_profile == WorkloadProfile("NC24-A100", "Consumption-GPU-NC24-A100")
    assert settings.max_lora_rank == 16 and settings.allowed_target_modules == ("qkv_proj", "o_proj")
    assert settings.max_adapter_mb == 100
    assert settings.arm_endpoint == "https://127.0.0.1:9999"
    assert settings.inference_registry_server == "example.azurecr.io"
    assert settings.inference_pull_identity_id == PULL_IDENTITY


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PLATFORM": "aca"}, "INFERENCE_IMAGE"),
        ({"PLATFORM": "k8s"}, "PLATFORM"),
        ({"MAX_LORA_RANK": "many"}, "MAX_LORA_RANK"),
        ({"MAX_ADAPTER_MB": "0"}, "MAX_ADAPTER_MB"),
        ({"MODEL_PATH": "models/base"}, "MODEL_PATH"),
        (
            {"INFERENCE_API_KEY": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/k)"},
            "INFERENCE_API_KEY",
        ),
        ({"GPU_WORKLOAD_PROFILE": "Consumption-GPU-H100"}, "GPU_WORKLOAD_PROFILE"),
        ({"GPU_WORKLOAD_PROFILE": "gpu-dedicated"}, "GPU_WORKLOAD_PROFILE_TYPE"),
        ({"INFERENCE_TARGET": "tpu"}, "INFERENCE_TARGET"),
        ({"LOCAL_RUNTIME": "vm"}, "LOCAL_RUNTIME"),
        ({"INFERENCE_REGISTRY_SERVER": "https://cr1.azurecr.io"}, "INFERENCE_REGISTRY_SERVER"),
        ({"INFERENCE_REGISTRY_SERVER": "cr1.azurecr.io/inference"}, "INFERENCE_REGISTRY_SERVER"),
        ({"INFERENCE_PULL_IDENTITY_ID": "id-adapters-pull"}, "INFERENCE_PULL_IDENTITY_ID"),
        (
            {"INFERENCE_PULL_IDENTITY_ID": PULL_IDENTITY.replace("userAssignedIdentities", "vaults")},
            "INFERENCE_PULL_IDENTITY_ID",
        ),
        (
            {"INFERENCE_PULL_IDENTITY_ID": PULL_IDENTITY.replace("11111111-", "not-a-guid-")},
            "INFERENCE_PULL_IDENTITY_ID",
        ),
        (
            {"PLATFORM": "aca", "INFERENCE_IMAGE": "cr1.azurecr.io/inference:1"},
            "INFERENCE_PULL_IDENTITY_ID",
        ),
        ({"PLATFORM": "aca", "INFERENCE_IMAGE": "ghcr.io/org/inference:1"}, "INFERENCE_API_KEY"),
        ({"PLATFORM": "aca", "INFERENCE_IMAGE": "ghcr.io/org/inference:1", "INFERENCE_API_KEY": " "}, "INFERENCE_API_KEY"),
    ],
)
def test_invalid_app_setting_names_the_key(env: dict[str, str], key: str) -> None:
    """Each invalid app setting raises ConfigError naming it and the environment."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**MINIMAL_ENV, **env})
    assert caught.value.key == key and caught.value.source == "environment"


@pytest.mark.parametrize(
    ("image", "server", "expected"),
    [
        ("cradapters123.azurecr.io/inference:v1", "", "cradapters123.azurecr.io"),
        ("CrAdapters123.azurecr.io/inference@sha256:" + "0" * 64, "", "cradapters123.azurecr.io"),
        ("cradapters123.azurecr.io/inference:v1", "registry.example.com", "registry.example.com"),
        ("ghcr.io/org/inference:v1", "", ""),
        ("inference:v1", "", ""),
        ("docker.io/library/azurecr.io:v1", "", ""),
    ],
)
def test_registry_server_is_explicit_or_the_acr_host_of_the_image(
    image: str, server: str, expected: str
) -> None:
    """INFERENCE_REGISTRY_SERVER wins; else an *.azurecr.io image host is the registry; else none (public image)."""
    env = {
        **ACA_ENV,
        "INFERENCE_IMAGE": image,
        "INFERENCE_PULL_IDENTITY_ID": PULL_IDENTITY,
    }
    settings = Settings.from_env({**env, "INFERENCE_REGISTRY_SERVER": server})
    assert settings.inference_registry_server == expected
    assert settings.inference_pull_identity_id == PULL_IDENTITY


def test_public_image_and_local_platform_need_no_pull_identity() -> None:
    """Only PLATFORM=aca with a private registry requires INFERENCE_PULL_IDENTITY_ID."""
    public = Settings.from_env({**ACA_ENV, "INFERENCE_IMAGE": "ghcr.io/org/inference:1"})
    assert public.inference_registry_server == "" and public.inference_pull_identity_id == ""
    local = Settings.from_env({**MINIMAL_ENV, "INFERENCE_IMAGE": "cr1.azurecr.io/inference:1"})
    assert local.platform == "local" and local.inference_pull_identity_id == ""


def test_aca_without_api_key_is_a_configuration_error() -> None:
    """PLATFORM=aca (a public ingress) without INFERENCE_API_KEY fails, saying it is missing and why."""
    env = {**ACA_ENV, "INFERENCE_IMAGE": "ghcr.io/org/inference:1"}
    assert Settings.from_env(env).inference_api_key == "chat-key-123"
    del env["INFERENCE_API_KEY"]
    with pytest.raises(ConfigError, match=r"INFERENCE_API_KEY in environment: missing .*PLATFORM=aca"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "PLATFORM": "local"}).inference_api_key == ""  # local: loopback, open


def test_dedicated_workload_profile() -> None:
    """A dedicated profile takes its type and counts from app settings."""
    env = {
        "GPU_WORKLOAD_PROFILE": "gpu-a100",
        "GPU_WORKLOAD_PROFILE_TYPE": "NC24-A100",
        "GPU_WORKLOAD_PROFILE_MAX_COUNT": "2",
    }
    profile = Settings.from_env({**MINIMAL_ENV, **env}).workload_profile
    assert profile == WorkloadProfile("gpu-a100", "NC24-A100", 0, 2) and not profile.consumption
    assert WorkloadProfile.from_dict(profile.to_dict()) == profile


def test_cpu_target_runs_transformers_on_the_consumption_profile() -> None:
    """INFERENCE_TARGET=cpu: the environment's Consumption profile (GPU_WORKLOAD_PROFILE does not apply) and the
    transformers engine; the default target is the GPU one, with SGLang."""
    env = {**MINIMAL_ENV, "INFERENCE_TARGET": "CPU", "GPU_WORKLOAD_PROFILE": "Consumption-GPU-NC24-A100"}
    profile = Settings.from_env(env).workload_profile
    assert profile == WorkloadProfile("Consumption", "Consumption") and profile.cpu_only
    assert profile.engine == "transformers" and not profile.consumption
    default = Settings.from_env(MINIMAL_ENV).workload_profile
    assert default.engine == "sglang" and not default.cpu_only


def test_secrets_stay_out_of_repr() -> None:
    """The API key and the storage connection string never appear in repr."""
    env = {
        **MINIMAL_ENV,
        "INFERENCE_API_KEY": "key-123-secret",
        "AzureWebJobsStorage": "AccountKey=abc-secret",
    }
    settings = Settings.from_env(env)
    assert settings.inference_api_key == "key-123-secret"
    assert "secret" not in repr(settings)
