"""The orchestrator's settings: the AI Toolkit template's files, read as they are, and app settings.

- `InferenceConfig`: `infra/inference.config.json` (`SUBSCRIPTION_ID`, `RESOURCE_GROUP_NAME`, `STORAGE_ACCOUNT_NAME`,
  `FILE_SHARE_NAME`, `ACA_APP_NAME`, `ACA_APP_ENDPOINT`), from the file or from app settings of the same names;
  `write_inference_config` writes it back in the template's shape once provisioning knows the endpoint.
- `ProvisionParameters`: `infra/provision/inference.parameters.json` (ARM deploymentParameters: `parameters.<name>.value`).
  A null (or absent) value means "the default": the fine-tuning resource named in inference.config.json.
- `Settings`: the Functions app's settings (`PLATFORM`, `INFERENCE_IMAGE`, `BASE_MODEL_NAME`, ...), from the environment.
- `WorkloadProfile`: the GPU workload profile the inference container runs on (`GPU_WORKLOAD_PROFILE`).

Every loader raises `ConfigError` naming the key and where it was read. Secrets stay out of `repr`.

Fail closed: `PLATFORM=aca` gives the inference app a public ingress, so it requires `INFERENCE_API_KEY` (the chat
key). The admin key of the inference server's `/admin/*` routes is no setting: the platform generates one per app,
never equal to a chat key (`activities.platform.base.ADMIN_KEY_SECRET`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from activities.validation import APP_NAME_PATTERN

ENV_SOURCE = "environment"

# Serverless GPU workload profile types and the container size each one gives (cpu cores, memory).
CONSUMPTION_GPU_PROFILES: dict[str, tuple[float, str]] = {
    "Consumption-GPU-NC24-A100": (24.0, "220Gi"),
    "Consumption-GPU-NC8as-T4": (8.0, "56Gi"),
}
# The CPU target (INFERENCE_TARGET=cpu): the environment's Consumption profile, and the container size given to it
# (ARM allows 0.25-4 cores with twice as many GiB there; the largest, for a small model).
CPU_PROFILE = "Consumption"
CPU_CONTAINER_SIZE: tuple[float, str] = (4.0, "8Gi")
TARGETS = ("gpu", "cpu")
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
_KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
_STORAGE_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_SHARE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_ACA_NAME_RE = re.compile(rf"^{APP_NAME_PATTERN.pattern}$")
ACR_SUFFIX = ".azurecr.io"  # an image on such a host is pulled with INFERENCE_PULL_IDENTITY_ID
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_REGISTRY_SERVER_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?$")
_USER_ASSIGNED_IDENTITY_RE = re.compile(
    r"^/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"/resourcegroups/[-\w.()]{1,90}"
    r"/providers/microsoft\.managedidentity/userassignedidentities/[a-z0-9][a-z0-9_-]{2,127}$",
    re.IGNORECASE,
)
_NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "storage": (_STORAGE_ACCOUNT_RE, "3-24 lowercase letters and digits"),
    "share": (_SHARE_RE, "3-63 lowercase letters, digits and single hyphens"),
    "aca": (_ACA_NAME_RE, "2-32 lowercase letters, digits and hyphens, starting with a letter"),
}


class ConfigError(ValueError):
    """A setting is missing or invalid; `key` and `source` (file path or "environment") say which."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        super().__init__(f"{key} in {source}: {problem}")
        self.key = key
        self.source = source


def _read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("(file)", source, "file not found") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("(file)", source, f"not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise ConfigError("(file)", source, "expected a JSON object")
    return data


def _check_name(value: str, key: str, source: str, rule: str) -> str:
    pattern, text = _NAME_RULES[rule]
    if not pattern.match(value):
        raise ConfigError(key, source, f"{value!r} is not a valid name ({text})")
    return value


def _text(data: Mapping[str, Any], key: str, source: str, *, required: bool = True, default: str = "") -> str:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ConfigError(key, source, "missing")
        return default
    if not isinstance(value, str):
        raise ConfigError(key, source, f"expected a string, got {type(value).__name__}")
    return value.strip()


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(key, ENV_SOURCE, f"expected an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(key, ENV_SOURCE, f"must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class InferenceConfig:
    """`infra/inference.config.json`: where the inference app lives. Written back with the endpoint after provisioning."""

    subscription_id: str
    resource_group_name: str
    storage_account_name: str
    file_share_name: str
    aca_app_name: str
    aca_app_endpoint: str = ""  # empty until provisioned

    # dataclass field -> the template's key
    KEYS = {
        "subscription_id": "SUBSCRIPTION_ID",
        "resource_group_name": "RESOURCE_GROUP_NAME",
        "storage_account_name": "STORAGE_ACCOUNT_NAME",
        "file_share_name": "FILE_SHARE_NAME",
        "aca_app_name": "ACA_APP_NAME",
        "aca_app_endpoint": "ACA_APP_ENDPOINT",
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "inference.config.json") -> InferenceConfig:
        """Build from the template's keys; every key but ACA_APP_ENDPOINT is required."""
        values = {
            name: _text(data, key, source, required=name != "aca_app_endpoint")
            for name, key in cls.KEYS.items()
        }
        _check_name(values["storage_account_name"], "STORAGE_ACCOUNT_NAME", source, "storage")
        _check_name(values["file_share_name"], "FILE_SHARE_NAME", source, "share")
        _check_name(values["aca_app_name"], "ACA_APP_NAME", source, "aca")
        endpoint = values["aca_app_endpoint"]
        if endpoint and not endpoint.startswith("https://"):
            raise ConfigError("ACA_APP_ENDPOINT", source, f"expected an https:// URL, got {endpoint!r}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InferenceConfig:
        """Read `inference.config.json` as the template writes it."""
        return cls.from_dict(_read_json_object(path), str(path))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InferenceConfig:
        """Read the same keys from app settings (the Functions app does not ship the file)."""
        return cls.from_dict(env, ENV_SOURCE)

    def to_dict(self) -> dict[str, str]:
        """The template's shape: upper-case keys, in the template's order."""
        return {key: getattr(self, name) for name, key in self.KEYS.items()}

    def with_endpoint(self, endpoint: str) -> InferenceConfig:
        """A copy carrying the provisioned app's endpoint."""
        return replace(self, aca_app_endpoint=endpoint)


def write_inference_config(path: str | os.PathLike[str], config: InferenceConfig) -> None:
    """Write `config` in the template's inference.config.json shape, atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent, delete=False, suffix=".tmp"
    ) as tmp:
        tmp.write(text)
    os.replace(tmp.name, target)


@dataclass(frozen=True)
class ProvisionParameters:
    """`infra/provision/inference.parameters.json`. `None` means the default (the fine-tuning resource / RG location)."""

    default_commands: tuple[str, ...] | None = None
    maximum_instance_count: int | None = None
    location: str | None = None
    storage_account_name: str | None = None
    file_share_name: str | None = None
    aca_environment_name: str | None = None
    aca_environment_storage_name: str | None = None
    aca_app_name: str | None = None
    aca_log_analytics_name: str | None = None

    # dataclass field -> ARM parameter name
    NAMES = {
        "default_commands": "defaultCommands",
        "maximum_instance_count": "maximumInstanceCount",
        "location": "location",
        "storage_account_name": "storageAccountName",
        "file_share_name": "fileShareName",
        "aca_environment_name": "acaEnvironmentName",
        "aca_environment_storage_name": "acaEnvironmentStorageName",
        "aca_app_name": "acaAppName",
        "aca_log_analytics_name": "acaLogAnalyticsName",
    }
    _RULES = {
        "storage_account_name": "storage",
        "file_share_name": "share",
        "aca_environment_name": "aca",
        "aca_app_name": "aca",
    }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "inference.parameters.json"
    ) -> ProvisionParameters:
        """Build from the deploymentParameters shape; unknown parameters are ignored, as ARM's template would."""
        params = data.get("parameters")
        if not isinstance(params, Mapping):
            raise ConfigError("parameters", source, "missing or not an object")
        values: dict[str, Any] = {}
        for name, arm_name in cls.NAMES.items():
            entry = params.get(arm_name)
            if entry is None:
                continue
            key = f"parameters.{arm_name}.value"
            if not isinstance(entry, Mapping) or "value" not in entry:
                raise ConfigError(key, source, "expected an object with a 'value'")
            values[name] = cls._parse(name, entry["value"], key, source)
        return cls(**values)

    @classmethod
    def _parse(cls, name: str, value: Any, key: str, source: str) -> Any:
        if value is None:
            return None
        if name == "default_commands":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
                raise ConfigError(key, source, "expected a non-empty list of strings")
            return tuple(value)
        if name == "maximum_instance_count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, source, f"expected an integer >= 1, got {value!r}")
            return value
        if not isinstance(value, str):
            raise ConfigError(key, source, f"expected a string or null, got {type(value).__name__}")
        if not value.strip():
            return None
        if name in cls._RULES:
            _check_name(value, key, source, cls._RULES[name])
        return value.strip()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProvisionParameters:
        """Read `inference.parameters.json` as the template ships it."""
        return cls.from_dict(_read_json_object(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        """The deploymentParameters shape (round-trips through `from_dict`)."""
        params = {}
        for name, arm_name in self.NAMES.items():
            value = getattr(self, name)
            params[arm_name] = {"value": list(value) if isinstance(value, tuple) else value}
        return {
            "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
            "contentVersion": "1.0.0.0",
            "parameters": params,
        }


@dataclass(frozen=True)
class WorkloadProfile:
    """The managed environment's workload profile the inference app runs on: a GPU one (Consumption GPU profiles have
    no counts; dedicated ones do), or for the CPU target the environment's own Consumption profile."""

    name: str
    type: str
    minimum_count: int | None = None
    maximum_count: int | None = None

    @property
    def consumption(self) -> bool:
        return self.type in CONSUMPTION_GPU_PROFILES

    @property
    def cpu_only(self) -> bool:
        """The CPU target's profile: the Consumption profile every workload-profiles environment has."""
        return self.type == CPU_PROFILE

    @property
    def engine(self) -> str:
        """The inference server's engine for this profile: SGLang on a GPU, transformers on CPU."""
        return "transformers" if self.cpu_only else "sglang"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkloadProfile:
        """`INFERENCE_TARGET` gpu (default): `GPU_WORKLOAD_PROFILE` = a Consumption-GPU-* type, or a dedicated
        profile name + `GPU_WORKLOAD_PROFILE_TYPE`. `INFERENCE_TARGET` cpu: the Consumption profile."""
        target = env.get("INFERENCE_TARGET", "").strip().lower() or "gpu"
        if target not in TARGETS:
            raise ConfigError("INFERENCE_TARGET", ENV_SOURCE, f"expected one of {TARGETS}, got {target!r}")
        key = "GPU_WORKLOAD_PROFILE"
        if target == "cpu":  # GPU_WORKLOAD_PROFILE (set by the template either way) does not apply
            return cls(name=CPU_PROFILE, type=CPU_PROFILE)
        value = env.get(key, "").strip() or "Consumption-GPU-NC8as-T4"
        if value in CONSUMPTION_GPU_PROFILES:
            return cls(name=value.removeprefix("Consumption-GPU-"), type=value)
        if value.startswith("Consumption"):
            raise ConfigError(
                key,
                ENV_SOURCE,
                f"unknown consumption profile {value!r}; one of {sorted(CONSUMPTION_GPU_PROFILES)}",
            )
        profile_type = env.get("GPU_WORKLOAD_PROFILE_TYPE", "").strip()
        if not profile_type:
            raise ConfigError(
                "GPU_WORKLOAD_PROFILE_TYPE", ENV_SOURCE, f"missing (needed for dedicated profile {value!r})"
            )
        minimum = _int(env, "GPU_WORKLOAD_PROFILE_MIN_COUNT", 0)
        maximum = _int(env, "GPU_WORKLOAD_PROFILE_MAX_COUNT", max(minimum, 1), minimum=1)
        if maximum < minimum:
            raise ConfigError(
                "GPU_WORKLOAD_PROFILE_MAX_COUNT", ENV_SOURCE, f"{maximum} < min count {minimum}"
            )
        return cls(name=value, type=profile_type, minimum_count=minimum, maximum_count=maximum)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadProfile:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class Settings:
    """The Functions app's settings (app settings / environment). Secrets are kept out of `repr`."""

    base_model_name: str  # BASE_MODEL_NAME: adapters must name this base model
    platform: str = "local"  # PLATFORM: "local" (embedded default) or "aca"
    inference_image: str = ""  # INFERENCE_IMAGE: required for "aca"
    model_path: str = "/mnt/adapters/models/base"  # MODEL_PATH: the base model's folder, in the share
    # INFERENCE_TARGET (gpu | cpu) and GPU_WORKLOAD_PROFILE: where the inference app runs, and so its engine
    workload_profile: WorkloadProfile = field(
        default_factory=lambda: WorkloadProfile("NC8as-T4", "Consumption-GPU-NC8as-T4")
    )
    max_lora_rank: int = 64  # MAX_LORA_RANK
    allowed_target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES  # ALLOWED_TARGET_MODULES (a,b,c)
    max_adapter_mb: int = 512  # MAX_ADAPTER_MB
    # INFERENCE_API_KEY: the inference server's API key(s), from a Key Vault reference (resolved by App Service);
    # required for "aca"
    inference_api_key: str = field(default="", repr=False)
    arm_endpoint: str = ""  # ARM_ENDPOINT: Resource Manager override (tests: the fake ARM)
    arm_ca_bundle: str = ""  # ARM_CA_BUNDLE: CA bundle for ARM_ENDPOINT (tests)
    # INFERENCE_REGISTRY_SERVER: the registry ACA pulls INFERENCE_IMAGE from ("" = a public image); from_env derives
    # it from the image's host when that is an Azure Container Registry
    inference_registry_server: str = ""
    # INFERENCE_PULL_IDENTITY_ID: resource id of the user-assigned identity with AcrPull on that registry
    inference_pull_identity_id: str = ""
    # LOCAL_RUNTIME (process | container) and LOCAL_INFERENCE_IMAGE: how the local platform runs a server
    local_runtime: str = "process"
    local_inference_image: str = "lora-inference:cpu"
    # LOCAL_REPLICAS (1..8): the local platform's replicas per app; None: the template's maximumInstanceCount
    local_replicas: int | None = None
    inference_config_path: str = "infra/inference.config.json"  # INFERENCE_CONFIG_PATH
    parameters_path: str = "infra/provision/inference.parameters.json"  # INFERENCE_PARAMETERS_PATH

    PLATFORMS = ("local", "aca")
    LOCAL_RUNTIMES = ("process", "container")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read app settings; `env` defaults to `os.environ`."""
        env = os.environ if env is None else env
        platform = env.get("PLATFORM", "local").strip().lower() or "local"
        if platform not in cls.PLATFORMS:
            raise ConfigError("PLATFORM", ENV_SOURCE, f"expected one of {cls.PLATFORMS}, got {platform!r}")
        image = env.get("INFERENCE_IMAGE", "").strip()
        if platform == "aca" and not image:
            raise ConfigError("INFERENCE_IMAGE", ENV_SOURCE, "missing (required when PLATFORM=aca)")
        api_key = env.get("INFERENCE_API_KEY", "").strip()
        if api_key.startswith(_KEY_VAULT_REFERENCE):
            # App Service leaves the reference text in place when it cannot resolve it.
            raise ConfigError("INFERENCE_API_KEY", ENV_SOURCE, "Key Vault reference was not resolved")
        modules = tuple(m.strip() for m in env.get("ALLOWED_TARGET_MODULES", "").split(",") if m.strip())
        model_path = env.get("MODEL_PATH", "").strip() or cls.model_path
        if not model_path.startswith("/"):
            raise ConfigError(
                "MODEL_PATH", ENV_SOURCE, f"expected an absolute path in the share, got {model_path!r}"
            )
        registry, pull_identity = _image_registry(env, image, platform)
        runtime = env.get("LOCAL_RUNTIME", "").strip().lower() or cls.local_runtime
        if runtime not in cls.LOCAL_RUNTIMES:
            raise ConfigError("LOCAL_RUNTIME", ENV_SOURCE, f"expected one of {cls.LOCAL_RUNTIMES}, got {runtime!r}")
        if platform == "aca" and not api_key:
            raise ConfigError(
                "INFERENCE_API_KEY", ENV_SOURCE, "missing (required when PLATFORM=aca: the app's ingress is public)"
            )
        return cls(
            base_model_name=_text(env, "BASE_MODEL_NAME", ENV_SOURCE),
            platform=platform,
            inference_image=image,
            model_path=model_path,
            workload_profile=WorkloadProfile.from_env(env),
            max_lora_rank=_int(env, "MAX_LORA_RANK", cls.max_lora_rank, minimum=1),
            allowed_target_modules=modules or DEFAULT_TARGET_MODULES,
            max_adapter_mb=_int(env, "MAX_ADAPTER_MB", cls.max_adapter_mb, minimum=1),
            inference_api_key=api_key,
            inference_registry_server=registry,
            inference_pull_identity_id=pull_identity,
            arm_endpoint=env.get("ARM_ENDPOINT", "").strip(),
            arm_ca_bundle=env.get("ARM_CA_BUNDLE", "").strip(),
            local_runtime=runtime,
            local_inference_image=env.get("LOCAL_INFERENCE_IMAGE", "").strip() or cls.local_inference_image,
            local_replicas=local_replicas(env),
            inference_config_path=env.get("INFERENCE_CONFIG_PATH", "").strip() or cls.inference_config_path,
            parameters_path=env.get("INFERENCE_PARAMETERS_PATH", "").strip() or cls.parameters_path,
        )


LOCAL_REPLICAS_RANGE = (1, 8)


def local_replicas(env: Mapping[str, str]) -> int | None:
    """The `LOCAL_REPLICAS` setting: the local platform's replica count per app (1..8), None when unset (then each
    app's spec says, the template's maximumInstanceCount)."""
    if not env.get("LOCAL_REPLICAS", "").strip():
        return None
    low, high = LOCAL_REPLICAS_RANGE
    value = _int(env, "LOCAL_REPLICAS", low, minimum=low)
    if value > high:
        raise ConfigError("LOCAL_REPLICAS", ENV_SOURCE, f"must be <= {high}, got {value}")
    return value


def _image_registry(env: Mapping[str, str], image: str, platform: str) -> tuple[str, str]:
    """(registry server, pull identity id) for `image`: INFERENCE_REGISTRY_SERVER, else the image's host when it is
    an Azure Container Registry, else no registry (a public image). PLATFORM=aca needs the identity for a registry."""
    server = env.get("INFERENCE_REGISTRY_SERVER", "").strip().lower()
    if server and not _REGISTRY_SERVER_RE.match(server):
        raise ConfigError(
            "INFERENCE_REGISTRY_SERVER",
            ENV_SOURCE,
            f"expected a host name such as cradapters123{ACR_SUFFIX}, got {server!r}",
        )
    host = image.split("/", 1)[0].lower() if "/" in image else ""
    server = server or (host if host.endswith(ACR_SUFFIX) else "")
    identity = env.get("INFERENCE_PULL_IDENTITY_ID", "").strip()
    if identity and not _USER_ASSIGNED_IDENTITY_RE.match(identity):
        raise ConfigError(
            "INFERENCE_PULL_IDENTITY_ID",
            ENV_SOURCE,
            "expected a user-assigned identity's resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/<name>), got {identity!r}",
        )
    if server and not identity and platform == "aca":
        raise ConfigError(
            "INFERENCE_PULL_IDENTITY_ID",
            ENV_SOURCE,
            f"missing (needed to pull INFERENCE_IMAGE from {server})",
        )
    return server, identity


def check_configuration(infra_dir: Path, env: Mapping[str, str]) -> list[str]:
    """Every problem with the template's files under `infra_dir` and the app settings in `env`, one line each."""
    checks = (
        lambda: InferenceConfig.load(infra_dir / "inference.config.json"),
        lambda: ProvisionParameters.load(infra_dir / "provision" / "inference.parameters.json"),
        lambda: Settings.from_env(env),
    )
    problems = []
    for check in checks:
        try:
            check()
        except (ConfigError, ValueError, OSError) as exc:
            problems.append(str(exc))
    return problems
