"""The "aca" platform: the inference server as an Azure Container App on a GPU workload profile.

`AcaPlatform` drives `ContainerAppsAPIClient` (azure-mgmt-appcontainers) and owns only part of the app: image,
command, env, secrets (compared by name: ARM never returns their values), scale min/max, the Azure Files volume at
/mnt/adapters, probes, ingress, the workload profile and the registry list. `ensure_app` GETs the app, creates it when
missing (PUT), patches our fields when they differ (JSON merge PATCH, so fields set by others survive) and writes
nothing otherwise. A changed template makes ACA cut a new revision by itself; `restart_app` restarts the latest
revision's replicas (`restart_revision`) without a new revision, e.g. to reload the base model from the share.
`heal_app` does the same when an app that should run (minReplicas > 0) has a latest revision with no running
replica or reporting Failed / Degraded. `delete_app` deletes the container app only (ARM's long-running DELETE).

Fail closed: the ingress is public, so `ensure_app` refuses (before any write) a spec without a chat API key
(`API_KEYS_SECRET`, from INFERENCE_API_KEY). The admin key (`spec.generated_secrets`, `ADMIN_KEY_SECRET` exposed as
INFERENCE_ADMIN_KEY) is generated, not a setting: a random value written once as the container app's secret, read
back (`listSecrets`) whenever a write must resend it, and regenerated if it ever equals a chat key. Operators read it
with `az containerapp secret show`; no second Key Vault secret is needed.

Private registry: with `AcaSettings.registry_server` set, the app is assigned the user-assigned pull identity
(`pull_identity_id`, AcrPull on the registry), pulls with it (`configuration.registries`) and keeps it away from the
containers' code (`identitySettings` lifecycle "None": image pull only). Identities others assigned are kept; when
the registry goes away only its registry entry is removed (the identity stays assigned, unusable by the code).

Retries: the clients are built with `retry_total=0`, so the SDK never retries by itself; the orchestrator's
`call_activity_with_retry` owns retries. Errors are translated once, in `arm_errors`: HTTP 429 →
`TransientPlatformError` with `retry_after` from `Retry-After`; 408 / 5xx, connection errors and timeouts →
`TransientPlatformError`; other 4xx → `ArmRequestError`; a long-running operation that ends Failed →
`ArmOperationFailedError`, both carrying ARM's code and message.

Long-running operations are bounded: an activity runs under the Functions host's `functionTimeout` (host.json,
10 minutes), so one call waits on ARM at most `ArmConnection.operation_budget_s` (300 s), honouring ARM's
`Retry-After` between polls. When that runs out, `OperationStillRunningError` (transient) ends the activity; ARM goes
on with the operation (and the SDK's poller thread keeps polling it in the worker until it ends), and the
orchestrator's retry (a durable timer) starts an activity that first waits, within a new budget, for the resource to
leave its in-progress provisioningState (`wait_until_settled`) before comparing or writing, so an operation in flight
is never written over. Budget + two reads (2 x `read_timeout`) < functionTimeout; with IO_RETRY's 4 attempts a step
waits on ARM for at most about 20 minutes in all.

ARM's rules we check before writing: container app names (`check_app_name`: 2-32 lowercase letters, digits and
'-', starting with a letter, ending alphanumeric, no '--'; Azure's resource-name rules for Microsoft.App/
containerApps) and probe fields within the ranges the REST spec documents (`PROBE_RANGES`, CommonDefinitions.json
`ContainerAppProbe`).

`ArmConnection` (subscription, resource group, credential, endpoint) is shared with `activities.provisioning`.
azure.* imports happen inside functions: the Functions host imports activities at start.
"""

from __future__ import annotations

import copy
import email.utils
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from activities.config import (
    CONSUMPTION_GPU_PROFILES,
    CPU_CONTAINER_SIZE,
    InferenceConfig,
    Settings,
    WorkloadProfile,
)
from activities.platform.base import (
    API_KEYS_SECRET,
    AppSpec,
    AppState,
    EnsureResult,
    PlatformError,
    TransientPlatformError,
    generate_secrets,
)
from activities.validation import APP_NAME_PATTERN

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.appcontainers import ContainerAppsAPIClient

log = logging.getLogger(__name__)

CONTAINER_NAME = "inference"
VOLUME_NAME = "adapters"
BASE_MODEL_ENV = "INFERENCE_BASE_MODEL_NAME"  # the inference server's setting for AppSpec.base_model
# The pull identity's `identitySettings` lifecycle: image pulls only, no tokens for the containers' code.
PULL_IDENTITY_LIFECYCLE = "None"
# A revision's runningState that heal_app restarts; "Processing" (starting) and inactive revisions are left alone.
_FAILED_RUNNING_STATES = frozenset({"Failed", "Degraded"})
_TRANSIENT_CONFLICT_CODES = frozenset(
    {"AnotherOperationInProgress", "ContainerAppOperationInProgress", "Conflict"}
)
# Probe fields: (min, max) as the REST spec documents them (CommonDefinitions.json `ContainerAppProbe`: "Minimum value
# is 1. Maximum value is 60." for initialDelaySeconds, ...; successThreshold must be 1 for Liveness and Startup).
PROBE_RANGES: dict[str, tuple[int, int]] = {
    "initialDelaySeconds": (1, 60),
    "periodSeconds": (1, 240),
    "timeoutSeconds": (1, 240),
    "failureThreshold": (1, 10),
    "successThreshold": (1, 10),
}
PROBE_TIMEOUT_S = 5  # per probe request (ARM's default is 1 s, tight for a busy GPU server)
# provisioningState values after which nothing runs on a resource (any other value: an operation is in flight, e.g.
# InProgress, Creating, Updating, InitializationInProgress, Waiting, ResolvingDNS).
_SETTLED_STATES = frozenset({"succeeded", "failed", "canceled", "upgradefailed"})


class ArmRequestError(PlatformError):
    """ARM refused a request (4xx); `status` and ARM's `code` say why."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ArmOperationFailedError(ArmRequestError):
    """A long-running ARM operation ended Failed or Canceled; the message is ARM's."""


class AppNotFoundError(PlatformError, LookupError):
    """The container app does not exist."""


class InvalidAppNameError(PlatformError, ValueError):
    """A container app name ARM refuses."""

    code = "ContainerAppInvalidName"


class OperationStillRunningError(TransientPlatformError):
    """ARM's long-running operation (or one found in flight) outlasted this activity's budget; a retry waits on."""


def check_app_name(name: str) -> None:
    """Refuse a container app name ARM refuses (`validation.APP_NAME_PATTERN`), saying what a valid one looks like."""
    if not APP_NAME_PATTERN.fullmatch(name):
        raise InvalidAppNameError(
            f"invalid container app name {name!r}: use 2-32 lowercase letters, digits and '-', starting with a "
            "letter, ending with a letter or digit, without '--' (Azure Container Apps' naming rules)"
        )


def check_probe(probe: Mapping[str, Any]) -> None:
    """Raise ValueError when a probe field is outside the range ARM accepts (`PROBE_RANGES`)."""
    kind = probe.get("type")
    for name, (low, high) in PROBE_RANGES.items():
        value = probe.get(name)
        if value is not None and not low <= value <= high:
            raise ValueError(f"{kind} probe: {name} {value} is outside ARM's range {low}-{high}")
    if kind in ("Liveness", "Startup") and probe.get("successThreshold", 1) != 1:
        raise ValueError(f"{kind} probe: successThreshold must be 1")


def provisioning_state(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("properties") or {}).get("provisioningState") or "")


def in_progress(body: Mapping[str, Any] | None) -> bool:
    """True when an operation is in flight on the resource (its provisioningState is not a settled one)."""
    state = provisioning_state(body)
    return bool(state) and state.lower() not in _SETTLED_STATES


@dataclass(frozen=True)
class ArmConnection:
    """How to reach Resource Manager. In production only the subscription and resource group are set.

    Tests point `base_url` at a fake ARM, pass its CA bundle as `connection_verify` and a static `credential`;
    `None` means `DefaultAzureCredential`.
    """

    subscription_id: str
    resource_group: str
    base_url: str = ""  # "" = the public cloud's Resource Manager
    connection_verify: str | bool = True  # CA bundle path for a private endpoint (tests)
    polling_interval: float = 10.0  # seconds between LRO polls when ARM sends no Retry-After
    read_timeout: float = 120.0  # seconds; a timeout surfaces as TransientPlatformError
    # the most one activity call waits on ARM's long-running operations (host.json functionTimeout is 600 s)
    operation_budget_s: float = 300.0
    credential: TokenCredential | None = field(default=None, repr=False, compare=False)
    # builds the clients' HTTP transport from (connection_verify, read_timeout); None = azure-core's default
    transport_factory: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    def deadline(self) -> float:
        """The monotonic time by which a call started now stops waiting on ARM (`operation_budget_s`)."""
        return time.monotonic() + self.operation_budget_s

    @classmethod
    def from_settings(cls, settings: Settings, config: InferenceConfig) -> ArmConnection:
        """Subscription and resource group from inference.config.json; endpoint overrides from app settings."""
        return cls(
            subscription_id=config.subscription_id,
            resource_group=config.resource_group_name,
            base_url=settings.arm_endpoint,
            connection_verify=settings.arm_ca_bundle or True,
        )

    def resolve_credential(self) -> TokenCredential:
        """The given credential, else a new `DefaultAzureCredential` (managed identity in Azure)."""
        if self.credential is not None:
            return self.credential
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def client(self, client_type: type, credential: TokenCredential) -> Any:
        """Build a management client of `client_type` with our transport and retry choices."""
        kwargs: dict[str, Any] = {
            "retry_total": 0,  # the orchestrator retries activities; the SDK must not retry behind its back
            "connection_verify": self.connection_verify,
            "read_timeout": self.read_timeout,
            "polling_interval": self.polling_interval,
        }
        if self.base_url:
            kwargs["base_url"] = self.base_url
        if self.transport_factory is not None:
            kwargs["transport"] = self.transport_factory(
                connection_verify=self.connection_verify, read_timeout=self.read_timeout
            )
        return client_type(credential, self.subscription_id, **kwargs)


def _arm_error_parts(exc: Any) -> tuple[str, str]:
    """(code, message) from an HttpResponseError: the parsed ARM error body, else the raw response."""
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if not message and exc.response is not None:
        try:
            body = exc.response.json()
        except Exception:  # noqa: BLE001 - not JSON: fall back to the exception's text
            body = None
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            code, message = body["error"].get("code"), body["error"].get("message")
    return str(code or ""), str(message or exc.message or exc)


@contextmanager
def arm_errors(action: str) -> Iterator[None]:
    """Translate azure-core errors raised in the block into `PlatformError` types (see the module docstring)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
    from azure.core.polling.base_polling import BadResponse, BadStatus, OperationFailed

    try:
        yield
    except HttpResponseError as exc:
        code, message = _arm_error_parts(exc)
        status = exc.status_code
        text = f"{action}: ({code or status}) {message}"
        if isinstance(exc.__cause__, OperationFailed):
            raise ArmOperationFailedError(
                f"{action}: operation failed: ({code}) {message}", status=status, code=code
            ) from exc
        if isinstance(exc.__cause__, (BadStatus, BadResponse)) and (status or 0) < 500 and status != 429:
            raise ArmOperationFailedError(text, status=status, code=code) from exc
        if status == 429:
            raise TransientPlatformError(text, retry_after=_retry_after(exc)) from exc
        if (
            status is None
            or status == 408
            or status >= 500
            or (status == 409 and code in _TRANSIENT_CONFLICT_CODES)
        ):
            raise TransientPlatformError(text, retry_after=_retry_after(exc)) from exc
        raise ArmRequestError(text, status=status, code=code) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:  # connection refused/reset, timeouts
        raise TransientPlatformError(f"{action}: {type(exc).__name__}: {exc.message}") from exc


def _retry_after(exc: Any) -> float | None:
    """Seconds from the response's `Retry-After` (delta-seconds or an HTTP date), or None."""
    header = exc.response.headers.get("Retry-After") if exc.response is not None else None
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def wait_for_operation(poller: Any, action: str, deadline: float) -> Any:
    """The result of a long-running operation, polled (ARM's Retry-After honoured) until `deadline`; after that
    `OperationStillRunningError`. ARM's failures are translated by `arm_errors`."""
    with arm_errors(action):
        poller.wait(timeout=max(0.0, deadline - time.monotonic()))
        if not poller.done():
            raise OperationStillRunningError(
                f"{action}: ARM's operation is still running at the end of this call's time budget; it goes on in "
                "Azure and the retry waits for it"
            )
        return poller.result()


def wait_until_settled(
    read: Callable[[], dict[str, Any] | None], what: str, deadline: float, interval: float
) -> dict[str, Any] | None:
    """`read()` again until the resource has no operation in flight (see `in_progress`) or `deadline` passes
    (`OperationStillRunningError`); None when it does not exist."""
    current = read()
    while in_progress(current):
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperationStillRunningError(
                f"{what} is still {provisioning_state(current)} (an operation in flight); the retry waits for it"
            )
        time.sleep(min(max(interval, 0.05), left))
        current = read()
    return current


def covers(desired: Any, current: Any) -> bool:
    """True when `current` has everything `desired` has (ARM adds defaults and read-only fields; those are ignored)."""
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(covers(v, current.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(desired) == len(current)
            and all(covers(d, c) for d, c in zip(desired, current, strict=True))
        )
    if isinstance(desired, str) and isinstance(current, str) and desired.startswith("/subscriptions/"):
        return desired.lower() == current.lower()  # resource ids are case-insensitive
    return desired == current


def owned_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a container app (ARM's JSON) that we own, normalised for comparison."""
    props = body.get("properties") or {}
    config = props.get("configuration") or {}
    template = props.get("template") or {}
    containers = template.get("containers") or []
    container = containers[0] if containers else {}
    identity = body.get("identity") or {}
    return {
        "managedEnvironmentId": props.get("managedEnvironmentId") or props.get("environmentId"),
        "workloadProfileName": props.get("workloadProfileName"),
        "containerNames": [c.get("name") for c in containers],
        "image": container.get("image"),
        "command": container.get("command") or [],
        "env": sorted(container.get("env") or [], key=lambda e: e.get("name", "")),
        "resources": container.get("resources") or {},
        "volumeMounts": container.get("volumeMounts") or [],
        "probes": sorted(container.get("probes") or [], key=lambda p: p.get("type", "")),
        "secretNames": sorted(s.get("name", "") for s in config.get("secrets") or []),
        "ingress": config.get("ingress") or {},
        "scale": {
            k: v for k, v in (template.get("scale") or {}).items() if k in ("minReplicas", "maxReplicas")
        },
        "volumes": template.get("volumes") or [],
        # ours: the whole registry list, compared on what we set (ARM adds empty username / passwordSecretRef)
        "registries": [
            {"server": str(r.get("server") or "").lower(), "identity": r.get("identity")}
            for r in config.get("registries") or []
        ],
        # ours within others': our identity among the assigned ones, and its lifecycle (ids are case-insensitive)
        "userAssignedIdentities": {k.lower(): {} for k in identity.get("userAssignedIdentities") or {}},
        "identitySettings": {
            str(s.get("identity") or "").lower(): s.get("lifecycle")
            for s in config.get("identitySettings") or []
        },
    }


def secret_env_name(secret_name: str) -> str:
    """The env var a secret is exposed as: `inference-api-keys` → `INFERENCE_API_KEYS`."""
    return secret_name.upper().replace("-", "_")


@dataclass(frozen=True)
class AcaSettings:
    """Where and how inference apps run in Azure Container Apps. Validates itself on construction."""

    arm: ArmConnection
    environment_name: str  # acaEnvironmentName
    location: str
    storage_name: str  # acaEnvironmentStorageName: the environment's Azure Files storage
    workload_profile: WorkloadProfile
    mount_path: str = "/mnt/adapters"
    target_port: int = 8000
    cpu: float | None = None  # None: the profile's size (Consumption-GPU-* types)
    memory: str | None = None
    startup_period_s: int = 30  # startup probe: up to 10 failures x 30 s after 60 s for the model to load (1-240)
    registry_server: str = ""  # the private registry the image is pulled from; "" = a public image
    pull_identity_id: str = ""  # user-assigned identity (resource id) with AcrPull on registry_server

    def __post_init__(self) -> None:
        for name in ("environment_name", "location", "storage_name"):
            if not getattr(self, name):
                raise ValueError(f"AcaSettings.{name} is required")
        if self.registry_server and not self.pull_identity_id:
            raise ValueError("AcaSettings.pull_identity_id is required to pull from registry_server")
        if not self.mount_path.startswith("/"):
            raise ValueError(f"AcaSettings.mount_path must be absolute, got {self.mount_path!r}")
        if not 1 <= self.target_port <= 65535:
            raise ValueError(f"AcaSettings.target_port out of range: {self.target_port}")
        low, high = PROBE_RANGES["periodSeconds"]
        if not low <= self.startup_period_s <= high:
            raise ValueError(f"AcaSettings.startup_period_s must be {low}-{high} (ARM's probe periodSeconds range)")
        self.resources()  # raises ValueError when a dedicated profile has no size

    def resources(self) -> dict[str, Any]:
        """The container's cpu/memory: explicit, else the GPU profile's whole size (the CPU target's: 4 cores, 8 GiB,
        the most ARM gives one app on the Consumption profile)."""
        if self.cpu is not None and self.memory:
            return {"cpu": self.cpu, "memory": self.memory}
        if self.workload_profile.cpu_only:
            return {"cpu": CPU_CONTAINER_SIZE[0], "memory": CPU_CONTAINER_SIZE[1]}
        profile = self.workload_profile.type
        size = CONSUMPTION_GPU_PROFILES.get(profile) or CONSUMPTION_GPU_PROFILES.get(
            f"Consumption-GPU-{profile}"
        )
        if size is None:
            raise ValueError(f"AcaSettings.cpu/memory are required for workload profile type {profile!r}")
        return {"cpu": size[0], "memory": size[1]}

    @property
    def environment_id(self) -> str:
        return (
            f"/subscriptions/{self.arm.subscription_id}/resourceGroups/{self.arm.resource_group}"
            f"/providers/Microsoft.App/managedEnvironments/{self.environment_name}"
        )


#: The container's probes (no key: the server answers them without one); the image test runs them on the image.
PROBE_PATHS = {"Liveness": "/health", "Readiness": "/ready", "Startup": "/health"}


def app_body(settings: AcaSettings, spec: AppSpec, generated: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The container app ARM body for `spec` (secret values included: send it, never log it). `generated`: the
    values of `spec.generated_secrets` (None: empty values, a body only to compare with)."""
    secrets = {**spec.secrets, **{n: (generated or {}).get(n, "") for n in spec.generated_secrets}}
    env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    if spec.base_model and BASE_MODEL_ENV not in spec.env:
        env.append({"name": BASE_MODEL_ENV, "value": spec.base_model})
    env += [{"name": secret_env_name(n), "secretRef": n} for n in sorted(secrets)]
    port = settings.target_port

    def probe(kind: str, path: str, period: int, failures: int, delay: int) -> dict[str, Any]:
        body = {
            "type": kind,
            "httpGet": {"path": path, "port": port},
            "initialDelaySeconds": delay,
            "periodSeconds": period,
            "timeoutSeconds": PROBE_TIMEOUT_S,
            "failureThreshold": failures,
        }
        check_probe(body)
        return body

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "env": sorted(env, key=lambda e: e["name"]),
        "resources": settings.resources(),
        "volumeMounts": [{"volumeName": VOLUME_NAME, "mountPath": settings.mount_path}],
        # liveness and readiness start once the startup probe succeeded: their delay is ARM's minimum, 1 s
        "probes": [
            probe("Liveness", PROBE_PATHS["Liveness"], 30, 3, delay=1),
            probe("Readiness", PROBE_PATHS["Readiness"], 10, 3, delay=1),
            probe("Startup", PROBE_PATHS["Startup"], settings.startup_period_s, 10, delay=60),
        ],
    }
    if spec.command:
        container["command"] = list(spec.command)
    configuration: dict[str, Any] = {
        "activeRevisionsMode": "Single",
        "ingress": {
            "external": True,
            "targetPort": port,
            "transport": "auto",
            "allowInsecure": False,
        },
        "secrets": [{"name": n, "value": v} for n, v in sorted(secrets.items())],
        "registries": [],  # always sent: a merge PATCH must clear a registry that is no longer used
    }
    body: dict[str, Any] = {
        "location": settings.location,
        "tags": {"managed-by": "adapter-deploy"},
        "properties": {
            "managedEnvironmentId": settings.environment_id,
            "workloadProfileName": settings.workload_profile.name,
            "configuration": configuration,
            "template": {
                "containers": [container],
                "scale": {"minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas},
                "volumes": [
                    {"name": VOLUME_NAME, "storageType": "AzureFile", "storageName": settings.storage_name}
                ],
            },
        },
    }
    if settings.registry_server:
        pull = settings.pull_identity_id
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {pull: {}}}
        configuration["registries"] = [{"server": settings.registry_server, "identity": pull}]
        configuration["identitySettings"] = [{"identity": pull, "lifecycle": PULL_IDENTITY_LIFECYCLE}]
    return body


def _patch_body(desired: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The merge PATCH for `desired`, keeping what others set where ARM replaces a value whole: a system-assigned
    identity (`identity.type`) and other identities' `identitySettings`."""
    patch = {k: copy.deepcopy(v) for k, v in desired.items() if k != "location"}
    if "identity" not in patch:
        return patch
    current_identity = current.get("identity") or {}
    if "systemassigned" in str(current_identity.get("type") or "").lower():
        patch["identity"]["type"] = "SystemAssigned,UserAssigned"
    config = patch["properties"]["configuration"]
    ours = {str(s["identity"]).lower() for s in config["identitySettings"]}
    current_config = (current.get("properties") or {}).get("configuration") or {}
    others = [
        s
        for s in current_config.get("identitySettings") or []
        if str(s.get("identity") or "").lower() not in ours
    ]
    config["identitySettings"] = others + config["identitySettings"]
    return patch


class AcaPlatform:
    """`Platform` on Azure Container Apps (see the module docstring for what it owns and how it fails)."""

    def __init__(self, settings: AcaSettings, client: ContainerAppsAPIClient | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> ContainerAppsAPIClient:
        if self._client is None:
            from azure.mgmt.appcontainers import ContainerAppsAPIClient

            arm = self.settings.arm
            self._client = arm.client(ContainerAppsAPIClient, arm.resolve_credential())
        return self._client

    @property
    def _rg(self) -> str:
        return self.settings.arm.resource_group

    def _get(self, app: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        with arm_errors(f"get container app {app!r}"):
            try:
                return self.client.container_apps.get(self._rg, app).as_dict()
            except ResourceNotFoundError:
                return None

    def ensure_app(self, spec: AppSpec) -> EnsureResult:
        """Create the app when missing, patch the fields we own when they differ, else write nothing. An operation
        found in flight is waited for first; waits are bounded (see the module docstring)."""
        check_app_name(spec.app)
        if not spec.secrets.get(API_KEYS_SECRET, "").strip():
            raise PlatformError(
                f"refusing to create or update container app {spec.app!r}: its ingress is public and it has no API "
                f"key (secret {API_KEYS_SECRET!r}, set INFERENCE_API_KEY)"
            )
        arm = self.settings.arm
        deadline = arm.deadline()
        current = wait_until_settled(
            lambda: self._get(spec.app), f"container app {spec.app!r}", deadline, arm.polling_interval
        )
        if current is not None and not self._differs(app_body(self.settings, spec), current):
            log.info("container app %s is up to date", spec.app)
            return EnsureResult(state=self._state(spec.app, current), changed=False)
        desired = app_body(self.settings, spec, generate_secrets(spec, self._kept_secrets(spec, current)))
        if current is None:
            log.info("creating container app %s (image %s)", spec.app, spec.image)
            action = f"create container app {spec.app!r}"
            with arm_errors(action):
                poller = self.client.container_apps.begin_create_or_update(self._rg, spec.app, desired)
            wait_for_operation(poller, action, deadline)
        else:
            log.info("updating container app %s (image %s)", spec.app, spec.image)
            patch = _patch_body(desired, current)
            action = f"update container app {spec.app!r}"
            with arm_errors(action):
                poller = self.client.container_apps.begin_update(self._rg, spec.app, patch)
            wait_for_operation(poller, action, deadline)
        return EnsureResult(state=self.describe_app(spec.app), changed=True)

    def _kept_secrets(self, spec: AppSpec, current: Mapping[str, Any] | None) -> dict[str, str]:
        """The values the app already holds for `spec.generated_secrets` (ARM returns them only from listSecrets)."""
        names = set(owned_fields(current)["secretNames"]) if current is not None else set()
        if not names & set(spec.generated_secrets):
            return {}
        with arm_errors(f"list secrets of container app {spec.app!r}"):
            listed = self.client.container_apps.list_secrets(self._rg, spec.app).as_dict()
        wanted = set(spec.generated_secrets)
        return {s["name"]: s.get("value") or "" for s in listed.get("value") or [] if s.get("name") in wanted}

    @staticmethod
    def _differs(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
        if (current.get("properties") or {}).get("provisioningState") in ("Failed", "Canceled"):
            return True  # a failed write left the app half-done: write again
        return not covers(owned_fields(desired), owned_fields(current))

    def describe_app(self, app: str) -> AppState:
        """Endpoint (`https://{ingress fqdn}`), latest revision and its replica count; `exists=False` when missing."""
        current = self._get(app)
        return AppState(app=app, exists=False) if current is None else self._state(app, current)

    def _revision(self, app: str, name: str) -> dict[str, Any]:
        """A revision's properties; {} when it is gone (replaced since the app was read)."""
        from azure.core.exceptions import ResourceNotFoundError

        with arm_errors(f"get revision {name!r}"):
            try:
                revision = self.client.container_apps_revisions.get_revision(self._rg, app, name)
            except ResourceNotFoundError:
                return {}
        return revision.as_dict().get("properties") or {}

    @staticmethod
    def _serving_revision(current: Mapping[str, Any]) -> str | None:
        """The revision that takes the traffic: the latest ready one, else the latest."""
        props = current.get("properties") or {}
        return props.get("latestReadyRevisionName") or props.get("latestRevisionName")

    def list_replicas(self, app: str) -> list[str]:
        """The serving revision's replicas whose `runningState` is Running (ARM's `revisions/{rev}/replicas`)."""
        from azure.core.exceptions import ResourceNotFoundError

        current = self._get(app)
        revision = self._serving_revision(current) if current is not None else None
        if not revision:
            return []
        with arm_errors(f"list replicas of revision {revision!r}"):
            try:
                listed = self.client.container_apps_revision_replicas.list_replicas(self._rg, app, revision)
            except ResourceNotFoundError:  # the revision was replaced since the app was read
                return []
        replicas = listed.as_dict().get("value") or []
        return sorted(r["name"] for r in replicas if (r.get("properties") or {}).get("runningState") == "Running")

    def _state(self, app: str, current: Mapping[str, Any]) -> AppState:
        props = current.get("properties") or {}
        fqdn = ((props.get("configuration") or {}).get("ingress") or {}).get("fqdn")
        revision_name = self._serving_revision(current)
        rev_props = self._revision(app, revision_name) if revision_name else {}
        replicas = int(rev_props.get("replicas") or 0)
        running = rev_props.get("runningState") == "Running" and bool(rev_props.get("active", True))
        containers = (props.get("template") or {}).get("containers") or [{}]
        return AppState(
            app=app,
            exists=True,
            endpoint=f"https://{fqdn}" if fqdn else None,
            revision=revision_name,
            replicas=replicas,
            running=running,
            image=containers[0].get("image"),
            command=list(containers[0].get("command") or []),
        )

    def delete_app(self, app: str) -> bool:
        """Delete the container app (ARM's long-running DELETE, waited for within the call's budget); the
        environment, its storage, the share, the workspace and the registry are shared and stay. False when the app
        did not exist. An operation found in flight is waited for first."""
        check_app_name(app)
        arm = self.settings.arm
        deadline = arm.deadline()
        current = wait_until_settled(lambda: self._get(app), f"container app {app!r}", deadline, arm.polling_interval)
        if current is None:
            return False
        log.info("deleting container app %s", app)
        action = f"delete container app {app!r}"
        with arm_errors(action):
            poller = self.client.container_apps.begin_delete(self._rg, app)
        wait_for_operation(poller, action, deadline)
        return True

    def restart_app(self, app: str) -> AppState:
        """Restart the latest revision's replicas (same revision; spec changes get a new one via `ensure_app`)."""
        current = self._get(app)
        if current is None:
            raise AppNotFoundError(f"container app {app!r} not found")
        revision = (current.get("properties") or {}).get("latestRevisionName")
        if not revision:
            raise PlatformError(f"container app {app!r} has no revision to restart")
        self._restart_revision(app, revision)
        return self._state(app, current)

    def _restart_revision(self, app: str, revision: str) -> None:
        log.info("restarting revision %s of %s", revision, app)
        with arm_errors(f"restart revision {revision!r}"):
            self.client.container_apps_revisions.restart_revision(self._rg, app, revision)

    def heal_app(self, app: str) -> dict[str, str]:
        """Restart the latest revision when the app should run (minReplicas > 0, no write in progress) and that
        revision, active, has no running replica or reports Failed / Degraded; else no action."""
        current = self._get(app)
        props = (current or {}).get("properties") or {}
        scale = (props.get("template") or {}).get("scale") or {}
        revision = props.get("latestRevisionName")
        if not revision or props.get("provisioningState") != "Succeeded" or int(scale.get("minReplicas") or 0) < 1:
            return {"action": "none"}
        rev = self._revision(app, revision)
        running_state = rev.get("runningState")
        if not rev or not rev.get("active", True) or running_state == "Processing":
            return {"action": "none"}
        if running_state in _FAILED_RUNNING_STATES:
            reason = f"revision {revision} is {running_state}"
        elif int(rev.get("replicas") or 0) == 0:
            reason = f"revision {revision} has no running replica (runningState {running_state})"
        else:
            return {"action": "none"}
        self._restart_revision(app, revision)
        return {"action": "restarted", "reason": reason}
