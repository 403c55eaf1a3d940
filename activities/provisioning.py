"""Idempotent provisioning of the inference resources, like the template's "Provision Azure Container Apps for
inference": it updates the resources it is given by name and creates the missing ones.

Steps, in order (`STEPS`), one `Provisioner` method each, each taking a single request dataclass and returning a
`StepResult` whose `action` is `created`, `updated` or `unchanged` (GET → compare → write only when needed):

1. `storage_account` (azure-mgmt-storage): StorageV2, TLS 1.2, no public blob access.
2. `file_share`: the Azure Files share holding adapters and the base model; its quota only ever grows.
3. `log_analytics` (azure-mgmt-loganalytics): the workspace the environment sends app logs to.
4. `environment`: the managed environment with the GPU workload profile, its `appLogsConfiguration` wired to the
   workspace (customer id + shared key fetched at run time, only when a write is needed, never logged). Profiles
   others added to a shared environment are kept.
5. `environment_storage`: the share registered on the environment (the account key fetched at run time).
6. `container_app`: the inference app, through `AcaPlatform.ensure_app`, pulling its image from the private registry
   with the pull identity when one is configured. Its `outcome` is the template's inference.config.json with
   `ACA_APP_ENDPOINT` filled in.

`ProvisionPlan` holds every request (JSON-friendly, for Durable); `Provisioner.plan` builds it from the template's
files and app settings, resolving null parameters to their defaults. Secret values never enter a request: the
container app's secrets are named in the request and their values come from the `Provisioner`'s settings.
Errors are the platform's (`activities.platform.aca.arm_errors`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, TypeVar

from activities.config import InferenceConfig, ProvisionParameters, Settings, WorkloadProfile
from activities.platform.aca import AcaPlatform, AcaSettings, ArmConnection, arm_errors, covers
from activities.platform.base import AppSpec, PlatformError

log = logging.getLogger(__name__)

STEPS = (
    "storage_account",
    "file_share",
    "log_analytics",
    "environment",
    "environment_storage",
    "container_app",
)
API_KEYS_SECRET = "inference-api-keys"  # exposed to the inference server as INFERENCE_API_KEYS
_RESOURCE_GROUP_API_VERSION = "2022-09-01"

_T = TypeVar("_T", bound="_JsonDataclass")


class Action(StrEnum):
    """What a step did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class MissingSecretError(PlatformError, KeyError):
    """A request names a secret the provisioner has no value for."""


class MissingDependencyError(PlatformError, LookupError):
    """A step needs a resource an earlier step creates (e.g. the workspace before the environment)."""


class _JsonDataclass:
    """JSON round trip for the request dataclasses: tuples become lists; unknown keys are ignored."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "workload_profile":
                value = WorkloadProfile.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{cls.__name__}.from_dict: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class StorageAccountRequest(_JsonDataclass):
    """A general-purpose v2 storage account (storageAccountName)."""

    location: str
    account_name: str
    sku: str = "Standard_LRS"


@dataclass(frozen=True)
class FileShareRequest(_JsonDataclass):
    """The Azure Files share (fileShareName); an existing larger share is left as it is."""

    account_name: str
    share_name: str
    quota_gib: int = 1024


@dataclass(frozen=True)
class LogAnalyticsRequest(_JsonDataclass):
    """The Log Analytics workspace (acaLogAnalyticsName)."""

    location: str
    workspace_name: str
    retention_days: int = 30
    sku: str = "PerGB2018"


@dataclass(frozen=True)
class EnvironmentRequest(_JsonDataclass):
    """The managed environment (acaEnvironmentName) with the GPU workload profile and the workspace's logs."""

    location: str
    environment_name: str
    workspace_name: str
    workload_profile: WorkloadProfile


@dataclass(frozen=True)
class EnvironmentStorageRequest(_JsonDataclass):
    """The share registered on the environment as acaEnvironmentStorageName."""

    environment_name: str
    storage_name: str
    account_name: str
    share_name: str
    access_mode: str = "ReadWrite"


@dataclass(frozen=True)
class ContainerAppRequest(_JsonDataclass):
    """The inference app (acaAppName). `secret_names` are resolved by the Provisioner; values never travel here.
    `registry_server` / `pull_identity_id`: the private registry and the identity that pulls from it ("" = public)."""

    location: str
    app: str
    environment_name: str
    storage_name: str
    workload_profile: WorkloadProfile
    image: str
    command: tuple[str, ...] = ()
    base_model: str = ""
    min_replicas: int = 0
    max_replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()
    registry_server: str = ""
    pull_identity_id: str = ""


@dataclass(frozen=True)
class StepResult(_JsonDataclass):
    """What one step did. container_app only: the app's `endpoint`, and from `run_step` the `outcome`, the
    template's inference.config.json with ACA_APP_ENDPOINT filled in."""

    step: str
    name: str
    action: str
    endpoint: str | None = None
    outcome: dict[str, str] | None = None


@dataclass(frozen=True)
class ProvisionPlan(_JsonDataclass):
    """Every step's request, plus the inference.config.json the outcome is written from."""

    inference_config: dict[str, str]
    storage_account: StorageAccountRequest
    file_share: FileShareRequest
    log_analytics: LogAnalyticsRequest
    environment: EnvironmentRequest
    environment_storage: EnvironmentStorageRequest
    container_app: ContainerAppRequest

    @classmethod
    def build(
        cls, config: InferenceConfig, params: ProvisionParameters, settings: Settings, location: str
    ) -> ProvisionPlan:
        """Resolve null parameters: names default to inference.config.json's (the fine-tuning resources), the
        environment to `<app>-env`, its storage to the share's name, the workspace to `<environment>-logs`."""
        account = params.storage_account_name or config.storage_account_name
        share = params.file_share_name or config.file_share_name
        app = params.aca_app_name or config.aca_app_name
        environment = params.aca_environment_name or f"{app}-env"
        storage_name = params.aca_environment_storage_name or share
        workspace = params.aca_log_analytics_name or f"{environment}-logs"
        profile = settings.gpu_workload_profile
        mount = "/mnt/adapters"
        return cls(
            inference_config=replace(
                config, storage_account_name=account, file_share_name=share, aca_app_name=app
            ).to_dict(),
            storage_account=StorageAccountRequest(location=location, account_name=account),
            file_share=FileShareRequest(account_name=account, share_name=share),
            log_analytics=LogAnalyticsRequest(location=location, workspace_name=workspace),
            environment=EnvironmentRequest(location, environment, workspace, profile),
            environment_storage=EnvironmentStorageRequest(environment, storage_name, account, share),
            container_app=ContainerAppRequest(
                location=location,
                app=app,
                environment_name=environment,
                storage_name=storage_name,
                workload_profile=profile,
                image=settings.inference_image,
                command=params.default_commands or (),
                base_model=settings.base_model_name,
                max_replicas=params.maximum_instance_count or 1,
                env={
                    "INFERENCE_ENGINE": "sglang",
                    "INFERENCE_MODEL_PATH": settings.model_path,
                    "INFERENCE_ADAPTER_STORE": f"{mount}/{app}",
                    "INFERENCE_MAX_LORA_RANK": str(settings.max_lora_rank),
                },
                secret_names=(API_KEYS_SECRET,) if settings.inference_api_key else (),
                registry_server=settings.inference_registry_server,
                pull_identity_id=settings.inference_pull_identity_id,
            ),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProvisionPlan:
        parts = {
            "storage_account": StorageAccountRequest,
            "file_share": FileShareRequest,
            "log_analytics": LogAnalyticsRequest,
            "environment": EnvironmentRequest,
            "environment_storage": EnvironmentStorageRequest,
            "container_app": ContainerAppRequest,
        }
        try:
            kwargs = {name: kind.from_dict(data[name]) for name, kind in parts.items()}
            return cls(inference_config=dict(data["inference_config"]), **kwargs)
        except KeyError as exc:
            raise ValueError(f"ProvisionPlan.from_dict: missing {exc}") from exc


class Provisioner:
    """Runs the provisioning steps against one subscription and resource group.

    `secrets` maps secret names (as `ContainerAppRequest.secret_names`) to values; `from_settings` fills it from
    app settings. Clients are built on first use and shared by the steps.
    """

    def __init__(self, arm: ArmConnection, secrets: Mapping[str, str] | None = None) -> None:
        self.arm = arm
        self._secrets = dict(secrets or {})
        self._credential: Any = None
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Provisioner(arm={self.arm!r}, secrets={sorted(self._secrets)})"

    @classmethod
    def from_settings(cls, settings: Settings, config: InferenceConfig) -> Provisioner:
        secrets = {API_KEYS_SECRET: settings.inference_api_key} if settings.inference_api_key else {}
        return cls(ArmConnection.from_settings(settings, config), secrets)

    def _client(self, name: str) -> Any:
        if name not in self._clients:
            if self._credential is None:
                self._credential = self.arm.resolve_credential()
            if name == "apps":
                from azure.mgmt.appcontainers import ContainerAppsAPIClient as client_type
            elif name == "storage":
                from azure.mgmt.storage import StorageManagementClient as client_type
            else:
                from azure.mgmt.loganalytics import LogAnalyticsManagementClient as client_type
            self._clients[name] = self.arm.client(client_type, self._credential)
        return self._clients[name]

    @property
    def _rg(self) -> str:
        return self.arm.resource_group

    def _get(self, what: str, getter: Any, *args: Any) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        with arm_errors(f"get {what}"):
            try:
                return getter(self._rg, *args).as_dict()
            except ResourceNotFoundError:
                return None

    # --- plan ---------------------------------------------------------------------------------------
    def resource_group_location(self) -> str:
        """The resource group's location (the template's default for `location`)."""
        from azure.core.rest import HttpRequest

        url = (
            f"/subscriptions/{self.arm.subscription_id}/resourcegroups/{self._rg}"
            f"?api-version={_RESOURCE_GROUP_API_VERSION}"
        )
        with arm_errors(f"get resource group {self._rg!r}"):
            response = self._client("apps").send_request(HttpRequest("GET", url))
            response.raise_for_status()
        return str(response.json()["location"])

    def plan(self, config: InferenceConfig, params: ProvisionParameters, settings: Settings) -> ProvisionPlan:
        """The plan for the template's files and app settings (reads the resource group when location is null)."""
        return ProvisionPlan.build(
            config, params, settings, params.location or self.resource_group_location()
        )

    # --- steps --------------------------------------------------------------------------------------
    def ensure_storage_account(self, request: StorageAccountRequest) -> StepResult:
        """Create the account when missing; patch TLS / public access / HTTPS-only when they differ."""
        accounts = self._client("storage").storage_accounts
        name = request.account_name
        wanted = {
            "minimumTlsVersion": "TLS1_2",
            "allowBlobPublicAccess": False,
            "supportsHttpsTrafficOnly": True,
        }
        current = self._get(f"storage account {name!r}", accounts.get_properties, name)
        if current is None:
            body = {
                "location": request.location,
                "sku": {"name": request.sku},
                "kind": "StorageV2",
                "properties": wanted,
            }
            with arm_errors(f"create storage account {name!r}"):
                accounts.begin_create(self._rg, name, body).result()
            return self._done("storage_account", name, Action.CREATED)
        if covers(wanted, current.get("properties")):
            return self._done("storage_account", name, Action.UNCHANGED)
        with arm_errors(f"update storage account {name!r}"):
            accounts.update(self._rg, name, {"properties": wanted})
        return self._done("storage_account", name, Action.UPDATED)

    def ensure_file_share(self, request: FileShareRequest) -> StepResult:
        """Create the share when missing; grow its quota when smaller than asked (never shrink a shared share)."""
        shares = self._client("storage").file_shares
        name = request.share_name
        current = self._get(f"file share {name!r}", shares.get, request.account_name, name)
        if current is None:
            body = {"properties": {"shareQuota": request.quota_gib, "enabledProtocols": "SMB"}}
            with arm_errors(f"create file share {name!r}"):
                shares.create(self._rg, request.account_name, name, body)
            return self._done("file_share", name, Action.CREATED)
        if int((current.get("properties") or {}).get("shareQuota") or 0) >= request.quota_gib:
            return self._done("file_share", name, Action.UNCHANGED)
        with arm_errors(f"update file share {name!r}"):
            shares.update(
                self._rg, request.account_name, name, {"properties": {"shareQuota": request.quota_gib}}
            )
        return self._done("file_share", name, Action.UPDATED)

    def ensure_log_analytics(self, request: LogAnalyticsRequest) -> StepResult:
        """Create the workspace when missing; rewrite it when its sku or retention differ."""
        workspaces = self._client("logs").workspaces
        name = request.workspace_name
        wanted = {"sku": {"name": request.sku}, "retentionInDays": request.retention_days}
        current = self._get(f"log analytics workspace {name!r}", workspaces.get, name)
        if current is not None and covers(wanted, current.get("properties")):
            return self._done("log_analytics", name, Action.UNCHANGED)
        location = (current or {}).get("location") or request.location
        with arm_errors(f"write log analytics workspace {name!r}"):
            workspaces.begin_create_or_update(
                self._rg, name, {"location": location, "properties": wanted}
            ).result()
        return self._done("log_analytics", name, Action.CREATED if current is None else Action.UPDATED)

    def ensure_environment(self, request: EnvironmentRequest) -> StepResult:
        """Create the environment, or patch its logs wiring and GPU profile when they differ (other profiles kept)."""
        environments = self._client("apps").managed_environments
        name = request.environment_name
        workspace = self._get(
            f"log analytics workspace {request.workspace_name!r}",
            self._client("logs").workspaces.get,
            request.workspace_name,
        )
        if workspace is None:
            raise MissingDependencyError(
                f"log analytics workspace {request.workspace_name!r} not found (run log_analytics first)"
            )
        customer_id = (workspace.get("properties") or {}).get("customerId")
        current = self._get(f"managed environment {name!r}", environments.get, name)
        props = (current or {}).get("properties") or {}
        profiles = _merge_profiles(props.get("workloadProfiles") or [], request.workload_profile)
        logs = {"destination": "log-analytics", "logAnalyticsConfiguration": {"customerId": customer_id}}
        if (
            current is not None
            and props.get("provisioningState") not in ("Failed", "Canceled")
            and covers(logs, props.get("appLogsConfiguration"))
            and covers(profiles, props.get("workloadProfiles"))
        ):
            return self._done("environment", name, Action.UNCHANGED)
        with arm_errors(f"get shared keys of workspace {request.workspace_name!r}"):
            keys = self._client("logs").shared_keys.get_shared_keys(self._rg, request.workspace_name)
        logs["logAnalyticsConfiguration"]["sharedKey"] = keys.primary_shared_key
        body = {"properties": {"appLogsConfiguration": logs, "workloadProfiles": profiles}}
        if current is None:
            with arm_errors(f"create managed environment {name!r}"):
                environments.begin_create_or_update(
                    self._rg, name, {"location": request.location, **body}
                ).result()
            return self._done("environment", name, Action.CREATED)
        with arm_errors(f"update managed environment {name!r}"):
            environments.begin_update(self._rg, name, body).result()
        return self._done("environment", name, Action.UPDATED)

    def ensure_environment_storage(self, request: EnvironmentStorageRequest) -> StepResult:
        """Register the share on the environment; rewrite it (with a freshly read account key) when it differs."""
        storages = self._client("apps").managed_environments_storages
        name = request.storage_name
        wanted = {
            "accountName": request.account_name,
            "shareName": request.share_name,
            "accessMode": request.access_mode,
        }
        current = self._get(f"environment storage {name!r}", storages.get, request.environment_name, name)
        if current is not None and covers(wanted, (current.get("properties") or {}).get("azureFile")):
            return self._done("environment_storage", name, Action.UNCHANGED)
        with arm_errors(f"list keys of storage account {request.account_name!r}"):
            keys = self._client("storage").storage_accounts.list_keys(self._rg, request.account_name)
        body = {"properties": {"azureFile": {**wanted, "accountKey": keys.as_dict()["keys"][0]["value"]}}}
        with arm_errors(f"write environment storage {name!r}"):
            storages.create_or_update(self._rg, request.environment_name, name, body)
        return self._done("environment_storage", name, Action.CREATED if current is None else Action.UPDATED)

    def platform(self, request: ContainerAppRequest) -> AcaPlatform:
        """The ACA platform for the plan's app (sharing this provisioner's client): describe, restart, ensure."""
        settings = AcaSettings(
            arm=self.arm,
            environment_name=request.environment_name,
            location=request.location,
            storage_name=request.storage_name,
            workload_profile=request.workload_profile,
            registry_server=request.registry_server,
            pull_identity_id=request.pull_identity_id,
        )
        return AcaPlatform(settings, client=self._client("apps"))

    def ensure_container_app(self, request: ContainerAppRequest) -> StepResult:
        """Create or update the inference app through `AcaPlatform.ensure_app`; the result carries its endpoint."""
        missing = [n for n in request.secret_names if n not in self._secrets]
        if missing:
            raise MissingSecretError(f"no value for secret(s) {missing} of app {request.app!r}")
        spec = AppSpec(
            app=request.app,
            image=request.image,
            command=list(request.command),
            base_model=request.base_model,
            min_replicas=request.min_replicas,
            max_replicas=request.max_replicas,
            env=dict(request.env),
            secrets={n: self._secrets[n] for n in request.secret_names},
        )
        existed = self._get(
            f"container app {request.app!r}", self._client("apps").container_apps.get, request.app
        )
        result = self.platform(request).ensure_app(spec)
        action = Action.CREATED if existed is None else Action.UPDATED
        return self._done(
            "container_app",
            request.app,
            action if result.changed else Action.UNCHANGED,
            endpoint=result.state.endpoint,
        )

    def run_step(self, step: str, plan: ProvisionPlan) -> StepResult:
        """Run one of `STEPS` from the plan (one Durable activity per step)."""
        if step == "container_app":
            result = self.ensure_container_app(plan.container_app)
            config = InferenceConfig.from_dict(plan.inference_config, "plan").with_endpoint(
                result.endpoint or ""
            )
            return replace(result, outcome=config.to_dict())
        runners = {
            "storage_account": lambda: self.ensure_storage_account(plan.storage_account),
            "file_share": lambda: self.ensure_file_share(plan.file_share),
            "log_analytics": lambda: self.ensure_log_analytics(plan.log_analytics),
            "environment": lambda: self.ensure_environment(plan.environment),
            "environment_storage": lambda: self.ensure_environment_storage(plan.environment_storage),
        }
        if step not in runners:
            raise ValueError(f"unknown provisioning step {step!r}; one of {STEPS}")
        return runners[step]()

    def provision_all(self, plan: ProvisionPlan) -> list[StepResult]:
        """Every step in order; the last result's `outcome` is the new inference.config.json."""
        return [self.run_step(step, plan) for step in STEPS]

    @staticmethod
    def _done(step: str, name: str, action: Action, endpoint: str | None = None) -> StepResult:
        log.info("provisioning %s %s: %s", step, name, action.value)
        return StepResult(step=step, name=name, action=action.value, endpoint=endpoint)


def _merge_profiles(existing: list[Mapping[str, Any]], profile: WorkloadProfile) -> list[dict[str, Any]]:
    """Existing profiles with ours added or replaced by name, and the Consumption profile every environment needs."""
    ours: dict[str, Any] = {"name": profile.name, "workloadProfileType": profile.type}
    if not profile.consumption:
        ours.update(minimumCount=profile.minimum_count or 0, maximumCount=profile.maximum_count or 1)
    merged = [dict(p) for p in existing if p.get("name") != profile.name]
    if not any(p.get("name") == "Consumption" for p in merged):
        merged.insert(0, {"name": "Consumption", "workloadProfileType": "Consumption"})
    keep = {p.get("name"): p for p in existing}
    merged.append(ours)
    # keep ARM's order for profiles already there, so an unchanged environment compares equal
    order = [p.get("name") for p in existing] + [p["name"] for p in merged if p["name"] not in keep]
    return sorted(merged, key=lambda p: order.index(p["name"]))
