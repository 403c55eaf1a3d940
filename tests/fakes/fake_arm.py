"""A fake Azure Resource Manager on loopback HTTPS, for the real management clients to talk to.

Serves the ARM paths that azure-mgmt-appcontainers, azure-mgmt-storage and azure-mgmt-loganalytics call for
provisioning and the container app's lifecycle, keeps resources in memory and behaves like ARM where our code
depends on it:

- every request must carry `api-version` (recorded per provider) and a bearer token, else 400 / 401 with ARM's
  error body;
- every PUT / PATCH body is checked against the SDK's own models (`sdk_body_errors`: unknown fields, read-only
  fields, JSON types, required fields on PUT); a violation is answered 400 `FakeArmSdkSchemaViolation` (a code ARM
  never sends: it marks a bug in our bodies) and recorded in `sdk_violations`. The management SDKs in use are
  TypeSpec-generated (`_utils.model_base`): their models carry no `_validation` constraints and no `validate()`,
  and their operations hard-code `client_side_validation = False`, so this walk over the models' rest fields and
  type hints is all the client-side checking they offer;
- long-running writes answer the way each SDK's `*_initial` method and the REST spec say they do (`_LRO`):
  container app PUT 201 + `Azure-AsyncOperation` (ContainerApps.json: final-state-via azure-async-operation), container
  app PATCH 202 + `Location`, managed environment PUT 201 / PATCH 202 + `Location`, storage account PUT 202 +
  `Location`, Log Analytics workspace PUT 202 + `Location`; environment storages and file shares are synchronous.
  The resource reads its in-progress provisioningState (`_IN_PROGRESS`) for `in_progress_polls` polls of the
  operation, each answered with `Retry-After: <retry_after>` (default 1 s, as ARM sends), then Succeeded (or
  Failed with the scripted error: an `Azure-AsyncOperation` status body, or the error status on the `Location`
  URL). A write to a resource whose operation is still running is refused 409, as ARM does;
- it refuses what ARM refuses for the fields we send (`_app_errors`, `_environment_errors`): container app names
  (2-32 lowercase letters, digits and '-', starting with a letter, ending alphanumeric, no '--': the Azure
  resource-name rules for Microsoft.App/containerApps); probe fields outside the ranges documented in the spec
  (CommonDefinitions.json `ContainerAppProbe`: initialDelaySeconds 1-60, periodSeconds 1-240, timeoutSeconds
  1-240, failureThreshold 1-10, successThreshold 1-10 and 1 for Liveness / Startup; one probe per type); a GPU
  workload profile added to an existing environment (Container Apps docs, "Workload profiles": "You can only apply
  a GPU workload profile to an environment as the environment is created") and workload profiles added to a
  Consumption-only environment (the environment type is fixed at creation). Error codes are the fake's own;
- write-only fields (container app secret values, a Log Analytics shared key, a storage account key) are not
  returned by GET; a container app's secret values come back only from its `listSecrets` action;
- a container app's DELETE is long-running as ARM's: 202 + `Location` (204 when there is none, 409 while an
  operation runs); it reads `Deleting` until the operation ends, then it is gone (404), revisions and secrets too;
- a container app gets a new revision when its template changes; revisions can be listed, read and restarted (a
  restart brings the revision's replicas back); `set_revision(...)` plays the runtime (a crashed replica);
- each revision has its replicas (`revisions/{rev}/replicas`, list and get, as `ContainerAppsRevisionReplicas`
  serves them: `{"value": [Replica]}` with `properties.runningState` and `containers[]`), one per `minReplicas`
  (at least 1) while the revision is active, named as ACA names them (`<revision>-<template hash>-<5 chars>`); a
  deactivated revision has none, a restart replaces them (new names); `add_replica` / `set_replica` /
  `remove_replica` play scale-out, a replica starting or crashing, and scale-in (the revision's `replicas` count
  follows);
- a container app's managed identities are checked like ARM does (a registry or identity setting may only name an
  assigned user-assigned identity) and returned with their principal and client ids; identity-based registries
  come back with ARM's empty `username` / `passwordSecretRef`;
- `fail_next(...)` scripts faults (429 with Retry-After, 500, ...) for the next N matching requests and
  `fail_operation(...)` makes the next long-running operation on a path fail;
- `log` records every request (method, path, api-version, JSON body) for tests to assert on.

Use `FakeArm.start(tmp_dir)` as a context manager; `base_url`, `ca_bundle` and `credential` feed the clients.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import socket
import ssl
import sys
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme
from azure.core.credentials import AccessToken

FAKE_TOKEN = "fake-arm-token"
# The characters of a Kubernetes pod name's random suffix (ACA's replica names end with five of them).
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# The clients' clock for tests that are not about LRO timing: they sleep 1/100 of what ARM asks (Retry-After).
FAST_CLIENT_CLOCK = 0.01

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourcegroups/(?P<rg>[^/]+)"
_STORAGE = _RG + r"/providers/microsoft\.storage/storageaccounts/(?P<account>[^/]+)"
_APP = _RG + r"/providers/microsoft\.app/containerapps/(?P<app>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    (kind, re.compile(pattern + "$"))
    for kind, pattern in [
        ("resource_group", _RG),
        ("storage_account", _STORAGE),
        ("storage_keys", _STORAGE + "/listkeys"),
        ("file_share", _STORAGE + r"/fileservices/default/shares/(?P<share>[^/]+)"),
        ("workspace", _RG + r"/providers/microsoft\.operationalinsights/workspaces/(?P<ws>[^/]+)"),
        (
            "shared_keys",
            _RG + r"/providers/microsoft\.operationalinsights/workspaces/(?P<ws>[^/]+)/sharedkeys",
        ),
        ("environment", _RG + r"/providers/microsoft\.app/managedenvironments/(?P<env>[^/]+)"),
        (
            "env_storage",
            _RG + r"/providers/microsoft\.app/managedenvironments/(?P<env>[^/]+)/storages/(?P<st>[^/]+)",
        ),
        ("container_app", _APP),
        ("revisions", _APP + "/revisions"),
        ("revision", _APP + r"/revisions/(?P<rev>[^/]+)"),
        ("restart", _APP + r"/revisions/(?P<rev>[^/]+)/restart"),
        ("replicas", _APP + r"/revisions/(?P<rev>[^/]+)/replicas"),
        ("replica", _APP + r"/revisions/(?P<rev>[^/]+)/replicas/(?P<replica>[^/]+)"),
        ("list_secrets", _APP + "/listsecrets"),
        ("operation", _SUB + r"/providers/fake\.operations/operations/(?P<op>[^/]+)"),
        ("location", _SUB + r"/providers/fake\.operations/locations/(?P<op>[^/]+)"),
    ]
]
# Resource kinds with a stored body, their ARM type, the methods they take and fields GET never returns.
_RESOURCES: dict[str, dict[str, Any]] = {
    "storage_account": {"type": "Microsoft.Storage/storageAccounts", "methods": ("PUT", "PATCH"), "hidden": []},
    "file_share": {
        "type": "Microsoft.Storage/storageAccounts/fileServices/shares",
        "methods": ("PUT", "PATCH"),
        "hidden": [],
    },
    "workspace": {"type": "Microsoft.OperationalInsights/workspaces", "methods": ("PUT",), "hidden": []},
    "environment": {
        "type": "Microsoft.App/managedEnvironments",
        "methods": ("PUT", "PATCH"),
        "hidden": [("properties", "appLogsConfiguration", "logAnalyticsConfiguration", "sharedKey")],
    },
    "env_storage": {
        "type": "Microsoft.App/managedEnvironments/storages",
        "methods": ("PUT",),
        "hidden": [("properties", "azureFile", "accountKey")],
    },
    "container_app": {"type": "Microsoft.App/containerApps", "methods": ("PUT", "PATCH"), "hidden": []},
}
# Long-running writes: (kind, method) -> (first status, polling header). From the SDKs' `*_initial` methods (the
# status codes they accept and the headers they read) and the REST specs; other writes answer 200 / 201 at once.
_LRO: dict[tuple[str, str], tuple[int, str]] = {
    ("storage_account", "PUT"): (202, "Location"),
    ("workspace", "PUT"): (202, "Location"),
    ("environment", "PUT"): (201, "Location"),
    ("environment", "PATCH"): (202, "Location"),
    ("container_app", "PUT"): (201, "Azure-AsyncOperation"),
    ("container_app", "PATCH"): (202, "Location"),
}
# The provisioningState a resource reads while its operation runs (each SDK's provisioning-state enum).
_IN_PROGRESS = {
    "storage_account": "Creating",
    "workspace": "Creating",
    "environment": "InitializationInProgress",
    "container_app": "InProgress",
}
_SETTLED_STATES = frozenset({"succeeded", "failed", "canceled"})
# Resource kinds the fake deletes (long-running: 202 + Location, see `FakeArm._delete`).
_DELETABLE = frozenset({"container_app"})
# ARM's 409 code for a write while an operation runs (Container Apps names its own).
_BUSY_CODES = {"container_app": "ContainerAppOperationInProgress"}

# Container app names (Azure resource-name rules, Microsoft.App/containerApps).
_APP_NAME = re.compile(r"[a-z](?:[a-z0-9]|-(?!-))*[a-z0-9]")
# Probe fields: (min, max), as CommonDefinitions.json's ContainerAppProbe describes them (the swagger has no
# minimum / maximum keywords, only these sentences; the SDK's docstrings repeat them).
PROBE_RANGES: dict[str, tuple[int, int]] = {
    "initialDelaySeconds": (1, 60),
    "periodSeconds": (1, 240),
    "timeoutSeconds": (1, 240),
    "failureThreshold": (1, 10),
    "successThreshold": (1, 10),
}
_GPU_PROFILE = re.compile(r"gpu|^nc\d", re.IGNORECASE)  # Consumption-GPU-*, NC24-A100, NC8as-T4, ...


def is_gpu_profile_type(profile_type: str) -> bool:
    """A GPU workload profile type: serverless (Consumption-GPU-*) or dedicated (NC* sizes)."""
    return bool(_GPU_PROFILE.search(profile_type or ""))


def _model_for(kind: str, method: str) -> type | None:
    """The SDK model a write body of `kind` is serialised from."""
    if kind in ("container_app", "environment", "env_storage"):
        from azure.mgmt.appcontainers import models

        return {
            "container_app": models.ContainerApp,
            "environment": models.ManagedEnvironment,
            "env_storage": models.ManagedEnvironmentStorage,
        }[kind]
    if kind in ("storage_account", "file_share"):
        from azure.mgmt.storage import models as storage_models

        if kind == "file_share":
            return storage_models.FileShare
        return (
            storage_models.StorageAccountCreateParameters
            if method == "PUT"
            else storage_models.StorageAccountUpdateParameters
        )
    if kind == "workspace":
        from azure.mgmt.loganalytics import models as log_models

        return log_models.Workspace
    return None


def _hints(model: type) -> dict[str, Any]:
    module = sys.modules[model.__module__]
    package = sys.modules[model.__module__.rsplit(".", 1)[0]]
    return typing.get_type_hints(model, {**vars(module), "_models": package})


def sdk_body_errors(model: type, body: Any, path: str = "", *, partial: bool = False) -> list[str]:
    """What in `body` the SDK's `model` does not allow: unknown or read-only fields, wrong JSON types, missing
    required fields (not for a merge PATCH: `partial`)."""
    if not isinstance(body, dict):
        return [f"{path or '/'}: expected an object for {model.__name__}, got {type(body).__name__}"]
    model()  # model_base computes _attr_to_rest_field on first instantiation
    fields = {rf._rest_name: (attr, rf) for attr, rf in model._attr_to_rest_field.items()}
    hints = _hints(model)
    errors: list[str] = []
    for key, value in body.items():
        where = f"{path}/{key}"
        if key not in fields:
            errors.append(f"{where}: not a field of {model.__name__}")
            continue
        attr, rf = fields[key]
        if list(rf._visibility or []) == ["read"]:
            errors.append(f"{where}: read-only in {model.__name__}")
            continue
        if value is None and partial:
            continue  # merge PATCH: null removes
        errors += _type_errors(hints.get(attr), value, where, partial)
    if not partial:
        for rest_name, (attr, rf) in fields.items():
            hint = hints.get(attr)
            required = hint is not None and type(None) not in typing.get_args(hint)
            if required and list(rf._visibility or []) != ["read"] and rest_name not in body:
                errors.append(f"{path}/{rest_name}: required by {model.__name__}")
    return errors


def _type_errors(hint: Any, value: Any, where: str, partial: bool) -> list[str]:
    if hint is None or hint is Any:
        return []
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return []
        results = [_type_errors(option, value, where, partial) for option in options]
        return [] if any(not r for r in results) else results[0]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in _type_errors(args[0], item, f"{where}/{i}", partial)]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        return [e for k, item in value.items() for e in _type_errors(args[1], item, f"{where}/{k}", partial)]
    if origin is typing.Literal:
        return [] if value in args else [f"{where}: {value!r} not one of {args}"]
    if isinstance(hint, type):
        if getattr(hint, "_is_model", False):
            return sdk_body_errors(hint, value, where, partial=partial)
        if issubclass(hint, bool):
            ok = isinstance(value, bool)
        elif issubclass(hint, str):  # str and the str enums ("modelAsString": other values are allowed)
            ok = isinstance(value, str)
        elif issubclass(hint, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif issubclass(hint, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = True  # datetimes, bytes, ...: not sent by us
        return [] if ok else [f"{where}: {value!r} is not {hint.__name__}"]
    return []


class FakeTokenCredential:
    """A static `TokenCredential`: a test double for authentication only (the clients themselves are real)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(FAKE_TOKEN, int(time.time()) + 3600)


@dataclass
class RecordedRequest:
    method: str
    path: str  # as sent (case kept), without the query
    api_version: str | None
    body: Any  # parsed JSON, or None
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    times: int
    retry_after: str | None
    code: str
    message: str


@dataclass
class _Operation:
    resource_key: str
    kind: str
    polls: int = 0
    error: tuple[str, str] | None = None  # (code, message) when scripted to fail
    done: bool = False
    delete: bool = False  # a DELETE: the resource goes away when it succeeds


@dataclass
class _State:
    location: str
    resource_groups: set[str]
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-case path -> body
    revisions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # app key -> revisions
    replicas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # revision id -> its replicas
    replicas_made: int = 0  # names are unique across the fake's life, as ACA's are
    operations: dict[str, _Operation] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)
    failing_operations: list[tuple[str, str, str]] = field(default_factory=list)  # (path part, code, message)
    log: list[RecordedRequest] = field(default_factory=list)
    api_versions: dict[str, set[str]] = field(default_factory=dict)  # provider namespace -> versions seen
    restarts: list[str] = field(default_factory=list)  # revision names restarted
    stalls: list[tuple[str, str, float]] = field(default_factory=list)  # (method, path part, seconds)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # app key -> secret values (write-only)
    sdk_violations: list[str] = field(default_factory=list)  # bodies the SDK's models do not allow


def _arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _drop(body: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = body
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _check_identities(app: dict[str, Any]) -> dict[str, Any] | None:
    """ARM's error when a registry or identity setting names a user-assigned identity the app is not assigned."""
    identity = app.get("identity") or {}
    assigned = {k.lower() for k in identity.get("userAssignedIdentities") or {}}
    if assigned and "userassigned" not in str(identity.get("type") or "").lower():
        return _arm_error("InvalidIdentityType", "userAssignedIdentities need identity type UserAssigned.")
    config = app["properties"].get("configuration") or {}
    for entry in [*(config.get("registries") or []), *(config.get("identitySettings") or [])]:
        named = str(entry.get("identity") or "")
        if named.startswith("/") and named.lower() not in assigned:
            return _arm_error(
                "InvalidParameterValue", f"Identity '{named}' is not assigned to the container app."
            )
    return None


def _check_consumption_size(app: dict[str, Any]) -> dict[str, Any] | None:
    """ARM's error when an app on the Consumption workload profile asks for a size that profile does not give: the
    containers' cpu must total 0.25-4 cores in steps of 0.25, with twice as many GiB of memory."""
    props = app["properties"]
    if str(props.get("workloadProfileName") or "").lower() != "consumption":
        return None
    containers = (props.get("template") or {}).get("containers") or []
    cpu = sum(float((c.get("resources") or {}).get("cpu") or 0) for c in containers)
    memory = sum(float(str((c.get("resources") or {}).get("memory") or "0Gi").removesuffix("Gi")) for c in containers)
    if 0.25 <= cpu <= 4.0 and (cpu * 4).is_integer() and memory == cpu * 2:
        return None
    return _arm_error(
        "ContainerAppInvalidResourceTotal",
        f"The total requested CPU and memory resources for this application (CPU: {cpu}, memory: {memory}Gi) is "
        "invalid. Total CPU and memory for all containers defined in a Container App must add up to one of the "
        "following CPU - Memory combinations: [cpu: 0.25, memory: 0.5Gi]; … [cpu: 4.0, memory: 8.0Gi]",
    )


def _fill_identities(app: dict[str, Any]) -> None:
    """What ARM adds to a container app's identities and identity-based registries."""
    identity = app.get("identity") or {}
    for resource_id, ids in (identity.get("userAssignedIdentities") or {}).items():
        seed = resource_id.lower()
        ids.update(
            principalId=str(uuid.uuid5(uuid.NAMESPACE_URL, seed + "#principal")),
            clientId=str(uuid.uuid5(uuid.NAMESPACE_URL, seed + "#client")),
        )
    if "systemassigned" in str(identity.get("type") or "").lower():
        identity.setdefault("principalId", str(uuid.uuid5(uuid.NAMESPACE_URL, app["id"].lower() + "#system")))
    for registry in (app["properties"].get("configuration") or {}).get("registries") or []:
        if registry.get("identity"):
            registry.setdefault("username", "")
            registry.setdefault("passwordSecretRef", "")


class FakeArm:
    """The fake's state and its controls; the HTTP handler below calls `handle`."""

    def __init__(self, base_url: str, ca_bundle: str, location: str, resource_groups: set[str]) -> None:
        self.base_url = base_url
        self.ca_bundle = ca_bundle
        self.credential = FakeTokenCredential()
        self._state = _State(location=location, resource_groups={rg.lower() for rg in resource_groups})
        self._lock = threading.Lock()
        # Long-running operations: polls answered InProgress before the end, and the Retry-After sent meanwhile
        # (ARM sends whole seconds; tests may set a fraction to stay fast, never 0).
        self.in_progress_polls = 2
        self.retry_after = "1"  # whole seconds: the SDKs read the first response's Retry-After as an int
        self.client_time_scale = 1.0
        self._client_sleeps: list[float] = []

    # --- controls for tests -------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def start(
        cls,
        tmp_dir: Path,
        *,
        location: str = "westus3",
        resource_groups: tuple[str, ...] = ("rg-test",),
        retry_after: str = "1",
        in_progress_polls: int = 2,
        client_time_scale: float = 1.0,
    ) -> Iterator[FakeArm]:
        """Start on 127.0.0.1 (a free port) with a fresh trustme CA; stop on exit. `client_time_scale`: what part of
        each delay the clients' transport really sleeps (every asked-for delay is recorded in `client_sleeps`)."""
        ca = trustme.CA()
        ca_bundle = tmp_dir / "fake-arm-ca.pem"
        ca.cert_pem.write_to_path(str(ca_bundle))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        fake = cls(
            f"https://127.0.0.1:{server.server_address[1]}", str(ca_bundle), location, set(resource_groups)
        )
        fake.retry_after, fake.in_progress_polls = retry_after, in_progress_polls
        fake.client_time_scale = client_time_scale
        server.fake = fake  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield fake
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def connection(self, subscription_id: str, resource_group: str) -> Any:
        """An `ArmConnection` for the real management clients, pointed at this fake (TLS), whose transport sleeps
        `client_time_scale` of each delay the client asks for (Retry-After between polls) and records it."""
        from activities.platform.aca import ArmConnection

        return ArmConnection(subscription_id, resource_group, base_url=self.base_url,
                             connection_verify=self.ca_bundle, polling_interval=0, credential=self.credential,
                             transport_factory=self._transport)

    def _transport(self, **kwargs: Any) -> Any:
        from azure.core.pipeline.transport import RequestsTransport

        fake = self

        class _RecordingClockTransport(RequestsTransport):
            def sleep(self, duration: float) -> None:
                with fake._lock:
                    fake._client_sleeps.append(duration)
                time.sleep(duration * fake.client_time_scale)

        return _RecordingClockTransport(**kwargs)

    @property
    def client_sleeps(self) -> list[float]:
        """Every delay (seconds) the clients asked their transport to sleep, e.g. between LRO polls."""
        with self._lock:
            return list(self._client_sleeps)

    def fail_next(
        self,
        method: str,
        path_contains: str,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        code: str = "",
        message: str = "",
    ) -> None:
        """Answer the next `times` requests whose method and path match with `status` and ARM's error body."""
        default_code = {429: "TooManyRequests", 500: "InternalServerError", 409: "Conflict"}.get(
            status, "BadRequest"
        )
        with self._lock:
            self._state.faults.append(
                _Fault(
                    method.upper(),
                    path_contains.lower(),
                    status,
                    times,
                    retry_after,
                    code or default_code,
                    message or f"scripted {status}",
                )
            )

    def stall_next(self, method: str, path_contains: str, seconds: float) -> None:
        """Hold the next matching request for `seconds` before answering it normally (client timeouts)."""
        with self._lock:
            self._state.stalls.append((method.upper(), path_contains.lower(), seconds))

    def fail_operation(self, path_contains: str, code: str, message: str) -> None:
        """Make the next long-running operation on a matching path end Failed with this error."""
        with self._lock:
            self._state.failing_operations.append((path_contains.lower(), code, message))

    @property
    def log(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._state.log)

    def clear_log(self) -> None:
        with self._lock:
            self._state.log.clear()

    def writes(self) -> list[RecordedRequest]:
        """Logged PUT / PATCH / DELETE requests (POSTs are actions or reads such as listKeys)."""
        return [r for r in self.log if r.method in ("PUT", "PATCH", "DELETE")]

    @property
    def sdk_violations(self) -> list[str]:
        """Write bodies the SDK's models refused (each answered 400 FakeArmSdkSchemaViolation)."""
        with self._lock:
            return list(self._state.sdk_violations)

    def take_sdk_violations(self) -> list[str]:
        """The SDK-model violations so far, forgetting them (tests that send bad bodies on purpose)."""
        with self._lock:
            taken, self._state.sdk_violations = self._state.sdk_violations, []
            return taken

    def operation_polls(self) -> list[RecordedRequest]:
        """Logged polls of long-running operations (Azure-AsyncOperation and Location URLs)."""
        return [r for r in self.log if "/providers/fake.operations/" in r.path.lower()]

    def put_resource(self, path: str, body: dict[str, Any]) -> None:
        """Store a resource as it is (ARM's read shape), e.g. an environment someone else created."""
        with self._lock:
            stored = copy.deepcopy(body)
            stored.setdefault("properties", {}).setdefault("provisioningState", "Succeeded")
            stored.update(id=path, name=path.rsplit("/", 1)[-1])
            self._state.resources[path.lower()] = stored

    @property
    def api_versions(self) -> dict[str, set[str]]:
        with self._lock:
            return {k: set(v) for k, v in self._state.api_versions.items()}

    @property
    def restarts(self) -> list[str]:
        with self._lock:
            return list(self._state.restarts)

    def resource(self, path: str) -> dict[str, Any] | None:
        """The stored body (as ARM would return it on GET) at `path`, or None."""
        with self._lock:
            body = self._state.resources.get(path.lower())
            return copy.deepcopy(body) if body is not None else None

    def revisions(self, app_path: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state.revisions.get(app_path.lower(), []))

    def set_revision(self, app_path: str, name: str, **properties: Any) -> None:
        """Set runtime properties of a revision (`replicas`, `runningState`, `healthState`), as a crash would; a new
        `replicas` count removes replicas from the end or adds running ones."""
        with self._lock:
            revision = self._revision(app_path, name)
            revision["properties"].update(properties)
            if "replicas" in properties:
                self._scale(revision, int(properties["replicas"]))

    def replicas(self, app_path: str, revision: str) -> list[dict[str, Any]]:
        """The revision's replicas as ARM lists them."""
        with self._lock:
            return copy.deepcopy(self._state.replicas.get(self._revision(app_path, revision)["id"], []))

    def add_replica(self, app_path: str, revision: str, running_state: str = "Running") -> str:
        """Scale out by one replica (in `running_state`); returns its name."""
        with self._lock:
            found = self._revision(app_path, revision)
            replica = self._new_replica(found, running_state)
            self._state.replicas.setdefault(found["id"], []).append(replica)
            found["properties"]["replicas"] = len(self._state.replicas[found["id"]])
            return replica["name"]

    def set_replica(self, app_path: str, revision: str, name: str, running_state: str) -> None:
        """A replica's state changes (`Running`, `NotRunning`, `Unknown`), its containers' with it."""
        with self._lock:
            replica = self._replica(self._revision(app_path, revision), name)
            container_state = "Running" if running_state == "Running" else "Waiting"
            replica["properties"]["runningState"] = running_state
            for container in replica["properties"]["containers"]:
                container.update(runningState=container_state, ready=running_state == "Running")

    def remove_replica(self, app_path: str, revision: str, name: str) -> None:
        """Scale in: the replica is gone."""
        with self._lock:
            found = self._revision(app_path, revision)
            kept = [r for r in self._state.replicas.get(found["id"], []) if r["name"] != name]
            self._state.replicas[found["id"]] = kept
            found["properties"]["replicas"] = len(kept)

    def _revision(self, app_path: str, name: str) -> dict[str, Any]:
        return next(r for r in self._state.revisions[app_path.lower()] if r["name"] == name)

    def _replica(self, revision: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((r for r in self._state.replicas.get(revision["id"], []) if r["name"] == name), None)

    def _new_replica(self, revision: dict[str, Any], running_state: str = "Running") -> dict[str, Any]:
        """A replica as ARM returns it, named `<revision>-<template hash>-<5 chars>` like ACA's pods."""
        self._state.replicas_made += 1
        template = json.dumps(revision["properties"].get("template"), sort_keys=True)
        pod_hash = hashlib.sha256(template.encode()).hexdigest()[:10]
        digest = hashlib.sha256(f"{revision['id']}#{self._state.replicas_made}".encode()).digest()
        name = f"{revision['name']}-{pod_hash}-{''.join(_POD_ALPHABET[b % len(_POD_ALPHABET)] for b in digest[:5])}"
        running = running_state == "Running"
        containers = (revision["properties"].get("template") or {}).get("containers") or []
        return {
            "id": f"{revision['id']}/replicas/{name}",
            "name": name,
            "type": "Microsoft.App/containerApps/revisions/replicas",
            "properties": {
                "createdTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "runningState": running_state,
                "runningStateDetails": "",
                "containers": [
                    {"name": c.get("name"), "containerId": f"containerd://{hashlib.sha256(name.encode()).hexdigest()}",
                     "ready": running, "started": running, "restartCount": 0,
                     "runningState": "Running" if running else "Waiting", "runningStateDetails": ""}
                    for c in containers
                ],
                "initContainers": [],
            },
        }

    def _scale(self, revision: dict[str, Any], count: int) -> None:
        """Keep `count` replicas: drop from the end, or add running ones."""
        replicas = self._state.replicas.setdefault(revision["id"], [])
        del replicas[max(count, 0):]
        while len(replicas) < count:
            replicas.append(self._new_replica(revision))

    def secret_values(self, app_path: str) -> dict[str, str]:
        """What the app's write-only secrets hold (tests check values arrive without reading them back)."""
        with self._lock:
            return dict(self._state.secrets.get(app_path.lower(), {}))

    # --- request handling ---------------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        split = urlsplit(raw_path)
        path, query = split.path.rstrip("/"), parse_qs(split.query)
        api_version = (query.get("api-version") or [None])[0]
        record = RecordedRequest(method, path, api_version, body)
        with self._lock:
            stall = next((s for s in self._state.stalls if s[0] == method and s[1] in path.lower()), None)
            if stall:
                self._state.stalls.remove(stall)
        if stall:
            time.sleep(stall[2])  # outside the lock: other requests go on
        with self._lock:
            self._state.log.append(record)
            status, out_headers, payload = self._dispatch(method, path, api_version, headers, body)
            record.status, record.response_headers = status, dict(out_headers)
        return status, out_headers, payload

    def _dispatch(
        self, method: str, path: str, api_version: str | None, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        if headers.get("authorization") != f"Bearer {FAKE_TOKEN}":
            return 401, {}, _arm_error("AuthenticationFailed", "Missing or invalid bearer token.")
        if not api_version:
            return (
                400,
                {},
                _arm_error("MissingApiVersionParameter", "The api-version query parameter is required."),
            )
        key = path.lower()
        provider = re.search(r"/providers/([^/]+)", key)
        self._state.api_versions.setdefault(provider.group(1) if provider else "resources", set()).add(
            api_version
        )
        for fault in self._state.faults:
            if fault.method == method and fault.path_contains in key and fault.times > 0:
                fault.times -= 1
                out = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return fault.status, out, _arm_error(fault.code, fault.message)
        for kind, pattern in _ROUTES:
            match = pattern.match(key)
            if match:
                return self._route(kind, match.groupdict(), method, key, path, api_version, body)
        return 404, {}, _arm_error("NoRegisteredProviderFound", f"No route for {method} {path}")

    def _route(
        self, kind: str, parts: dict[str, str], method: str, key: str, path: str, api_version: str, body: Any
    ) -> tuple[int, dict[str, str], Any]:
        state = self._state
        if kind == "resource_group":
            if method == "GET" and parts["rg"] in state.resource_groups:
                return 200, {}, {"id": path, "name": parts["rg"], "location": state.location}
            return (
                404,
                {},
                _arm_error("ResourceGroupNotFound", f"Resource group '{parts['rg']}' could not be found."),
            )
        rg_key = key.split("/providers/")[0]
        if kind not in ("operation", "location") and rg_key.split("/resourcegroups/")[-1] not in state.resource_groups:
            return 404, {}, _arm_error("ResourceGroupNotFound", "Resource group could not be found.")
        if kind in _RESOURCES:
            return self._resource(kind, method, key, path, api_version, body)
        if kind in ("operation", "location") and method == "GET":
            return self._operation(parts["op"], kind)
        if kind == "storage_keys" and method == "POST" and self._exists(key.removesuffix("/listkeys")):
            value = hashlib.sha256(key.encode()).hexdigest()
            return 200, {}, {"keys": [{"keyName": "key1", "value": value, "permissions": "FULL"}]}
        if kind == "shared_keys" and method == "POST" and self._exists(key.removesuffix("/sharedkeys")):
            return (
                200,
                {},
                {"primarySharedKey": hashlib.sha256(key.encode()).hexdigest(), "secondarySharedKey": "x"},
            )
        app_key = key.split("/revisions")[0].removesuffix("/listsecrets")
        if kind == "list_secrets" and method == "POST" and self._exists(app_key):
            values = state.secrets.get(app_key, {})
            return 200, {}, {"value": [{"name": n, "value": v} for n, v in sorted(values.items())]}
        if kind == "revisions" and method == "GET" and self._exists(app_key):
            return 200, {}, {"value": copy.deepcopy(state.revisions.get(app_key, []))}
        if kind in ("revision", "restart", "replicas", "replica") and self._exists(app_key):
            revision = next((r for r in state.revisions.get(app_key, []) if r["name"] == parts["rev"]), None)
            if revision is None:
                return (
                    404,
                    {},
                    _arm_error("ContainerAppRevisionNotFound", f"Revision '{parts['rev']}' not found."),
                )
            if kind == "revision" and method == "GET":
                return 200, {}, copy.deepcopy(revision)
            if kind == "replicas" and method == "GET":
                return 200, {}, {"value": copy.deepcopy(state.replicas.get(revision["id"], []))}
            if kind == "replica" and method == "GET":
                replica = self._replica(revision, parts["replica"])
                if replica is None:
                    return 404, {}, _arm_error("ContainerAppReplicaNotFound", f"Replica '{parts['replica']}' not found.")
                return 200, {}, copy.deepcopy(replica)
            if kind == "restart" and method == "POST":
                state.restarts.append(revision["name"])
                props = revision["properties"]
                if props.get("active"):  # its replicas come back, new ones
                    scale = (props.get("template") or {}).get("scale") or {}
                    props.update(replicas=max(1, scale.get("minReplicas") or 0), runningState="Running",
                                 healthState="Healthy")
                    self._scale(revision, 0)
                    self._scale(revision, props["replicas"])
                return 200, {}, None
        if kind in ("storage_keys", "shared_keys", "revisions", "revision", "restart", "replicas", "replica",
                    "list_secrets"):
            return 404, {}, _arm_error("ResourceNotFound", f"The parent of '{path}' was not found.")
        return 405, {}, _arm_error("MethodNotAllowed", f"{method} is not supported on {path}")

    def _exists(self, key: str) -> bool:
        return key in self._state.resources

    def _resource(
        self, kind: str, method: str, key: str, path: str, api_version: str, body: Any
    ) -> tuple[int, dict[str, str], Any]:
        spec, state = _RESOURCES[kind], self._state
        current = state.resources.get(key)
        if method == "GET":
            if current is None:
                return 404, {}, _arm_error("ResourceNotFound", f"The Resource '{path}' was not found.")
            return 200, {}, copy.deepcopy(current)
        if method == "DELETE" and kind in _DELETABLE:
            return self._delete(kind, key, path, api_version)
        if method not in spec["methods"]:
            return 405, {}, _arm_error("MethodNotAllowed", f"{method} is not supported on {path}")
        if not isinstance(body, dict):
            return 400, {}, _arm_error("InvalidRequestContent", "The request content was invalid.")
        model = _model_for(kind, method)
        violations = sdk_body_errors(model, body, partial=method == "PATCH") if model else []
        if violations:
            state.sdk_violations += [f"{method} {path}: {v}" for v in violations]
            return 400, {}, _arm_error("FakeArmSdkSchemaViolation", "; ".join(violations))
        if method == "PATCH" and current is None:
            return 404, {}, _arm_error("ResourceNotFound", f"The Resource '{path}' was not found.")
        busy = str(((current or {}).get("properties") or {}).get("provisioningState") or "Succeeded")
        if current is not None and busy.lower() not in _SETTLED_STATES:
            code = _BUSY_CODES.get(kind, "AnotherOperationInProgress")
            return 409, {}, _arm_error(code, f"An operation is in progress on '{path}' ({busy}); retry later.")
        new = _merge_patch(current, body) if method == "PATCH" else copy.deepcopy(body)
        for read_only in ("id", "name", "type", "systemData"):
            new.pop(read_only, None)
        new.setdefault("properties", {})
        refusal = None
        if kind == "container_app":
            refusal = _app_errors(path.rsplit("/", 1)[-1], new) or self._store_app(key, current, new)
        elif kind == "environment":
            refusal = _environment_errors(current, new)
        if refusal:
            return 400, {}, refusal
        for hidden in spec["hidden"]:
            _drop(new, hidden)
        self._computed(kind, key, path, new)
        lro = _LRO.get((kind, method))
        failing = next((f for f in state.failing_operations if f[0] in key), None) if lro else None
        if failing:
            state.failing_operations.remove(failing)
        if not lro:  # synchronous
            new["properties"]["provisioningState"] = "Succeeded"
            state.resources[key] = new
            return (200 if current is not None else 201), {}, copy.deepcopy(new)
        new["properties"]["provisioningState"] = _IN_PROGRESS[kind]
        state.resources[key] = new
        op_id = uuid.uuid4().hex
        state.operations[op_id] = _Operation(key, kind, error=(failing[1], failing[2]) if failing else None)
        status, header = lro
        segment = "operations" if header == "Azure-AsyncOperation" else "locations"
        sub = key.split("/resourcegroups/")[0]
        op_url = f"{self.base_url}{sub}/providers/fake.operations/{segment}/{op_id}?api-version={api_version}"
        return status, {header: op_url, "Retry-After": self.retry_after}, copy.deepcopy(new)

    def _delete(self, kind: str, key: str, path: str, api_version: str) -> tuple[int, dict[str, str], Any]:
        """ARM's DELETE (ContainerApps.json `ContainerApps_Delete`, the SDK's `_delete_initial` accepts 200 / 202 /
        204): 204 when there is nothing to delete, 409 while an operation runs, else 202 + `Location` while the
        resource reads `Deleting`; it is gone once the operation succeeded."""
        state, current = self._state, self._state.resources.get(key)
        if current is None:
            return 204, {}, None
        busy = str((current.get("properties") or {}).get("provisioningState") or "Succeeded")
        if busy.lower() not in _SETTLED_STATES:
            code = _BUSY_CODES.get(kind, "AnotherOperationInProgress")
            return 409, {}, _arm_error(code, f"An operation is in progress on '{path}' ({busy}); retry later.")
        failing = next((f for f in state.failing_operations if f[0] in key), None)
        if failing:
            state.failing_operations.remove(failing)
        current["properties"]["provisioningState"] = "Deleting"
        op_id = uuid.uuid4().hex
        state.operations[op_id] = _Operation(key, kind, error=(failing[1], failing[2]) if failing else None,
                                             delete=True)
        sub = key.split("/resourcegroups/")[0]
        op_url = f"{self.base_url}{sub}/providers/fake.operations/locations/{op_id}?api-version={api_version}"
        return 202, {"Location": op_url, "Retry-After": self.retry_after}, None

    def _store_app(
        self, key: str, current: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Check identities, keep secret values write-only and cut a new revision when the template changed."""
        state = self._state
        error = _check_identities(new) or _check_consumption_size(new)
        if error:
            return error
        secrets = new["properties"].get("configuration", {}).get("secrets") or []
        known = state.secrets.get(key, {})
        values = {}
        for secret in secrets:
            value = secret.get("value", known.get(secret.get("name")))
            if value is None:
                return _arm_error("ContainerAppSecretInvalid", f"Secret '{secret.get('name')}' has no value.")
            values[secret["name"]] = value
            secret.pop("value", None)
        state.secrets[key] = values
        template = new["properties"].get("template")
        old_template = (current or {}).get("properties", {}).get("template")
        revisions = state.revisions.setdefault(key, [])
        if revisions and template == old_template:
            return None
        suffix = (template or {}).get("revisionSuffix") or f"r{len(revisions) + 1:03d}"
        name = f"{key.rsplit('/', 1)[-1]}--{suffix}"
        for revision in revisions:
            revision["properties"].update(active=False, replicas=0, runningState="Stopped")
            self._scale(revision, 0)
        revisions.append(
            {
                "id": f"{key}/revisions/{name}",
                "name": name,
                "type": "Microsoft.App/containerApps/revisions",
                "properties": {
                    "active": True,
                    "replicas": max(1, ((template or {}).get("scale") or {}).get("minReplicas") or 0),
                    "runningState": "Running",
                    "healthState": "Healthy",
                    "provisioningState": "Provisioned",
                    "template": copy.deepcopy(template),
                },
            }
        )
        self._scale(revisions[-1], revisions[-1]["properties"]["replicas"])
        return None

    def _computed(self, kind: str, key: str, path: str, new: dict[str, Any]) -> None:
        """Fill what ARM computes: ids, names, endpoints, latest revision."""
        props = new["properties"]
        new.update(id=path, name=path.rsplit("/", 1)[-1], type=_RESOURCES[kind]["type"])
        name = new["name"]
        if kind == "workspace":
            props["customerId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        elif kind == "environment":
            props["defaultDomain"] = f"{name}.{self._state.location}.azurecontainerapps.io"
        elif kind == "storage_account":
            props["primaryEndpoints"] = {"file": f"https://{name}.file.core.windows.net/"}
        elif kind == "container_app":
            _fill_identities(new)
            ingress = props.get("configuration", {}).get("ingress")
            if ingress is not None:
                ingress["fqdn"] = f"{name}.fake-env.{self._state.location}.azurecontainerapps.io"
            latest = self._state.revisions[key][-1]["name"]
            props.update(latestRevisionName=latest, latestReadyRevisionName=latest, runningStatus="Running")

    def _operation(self, op_id: str, style: str) -> tuple[int, dict[str, str], Any]:
        """A poll of an operation: InProgress for `in_progress_polls` polls, then its end. `operation`: the
        Azure-AsyncOperation status body; `location`: 202 while running, then the resource (or the error)."""
        operation = self._state.operations.get(op_id)
        if operation is None:
            return 404, {}, _arm_error("OperationNotFound", f"Operation '{op_id}' not found.")
        operation.polls += 1
        resource = self._state.resources.get(operation.resource_key)
        if not operation.done and operation.polls > self.in_progress_polls:
            operation.done = True
            if operation.delete and not operation.error:
                self._state.resources.pop(operation.resource_key, None)
                for revision in self._state.revisions.pop(operation.resource_key, []):
                    self._state.replicas.pop(revision["id"], None)
                self._state.secrets.pop(operation.resource_key, None)
                resource = None
            elif resource is not None:
                resource["properties"]["provisioningState"] = "Failed" if operation.error else "Succeeded"
        if not operation.done:
            waiting = {"Retry-After": self.retry_after}
            if style == "location":
                return 202, waiting, None
            return 200, waiting, {"id": op_id, "name": op_id, "status": "InProgress"}
        if style == "location":
            if operation.error:
                return 400, {}, _arm_error(*operation.error)
            if operation.delete:
                return 204, {}, None
            return 200, {}, copy.deepcopy(resource)
        body: dict[str, Any] = {"id": op_id, "name": op_id, "status": "Failed" if operation.error else "Succeeded"}
        if operation.error:
            body["error"] = {"code": operation.error[0], "message": operation.error[1]}
        return 200, {}, body


def _app_errors(name: str, app: dict[str, Any]) -> dict[str, Any] | None:
    """ARM's refusal of a container app's name or probes (see the module docstring for the rules' sources)."""
    if not (2 <= len(name) <= 32 and _APP_NAME.fullmatch(name)):
        return _arm_error(
            "ContainerAppInvalidName",
            f"Invalid ContainerApp name '{name}'. A name must consist of lower case alphanumeric characters or "
            "'-', start with an alphabetic character, end with an alphanumeric character, not contain '--' and "
            "be 2 to 32 characters long.",
        )
    containers = ((app.get("properties") or {}).get("template") or {}).get("containers") or []
    for container in containers:
        seen: set[str] = set()
        for probe in container.get("probes") or []:
            kind = str(probe.get("type") or "")
            if kind in seen:
                return _arm_error("ContainerAppInvalidProbe", f"Container '{container.get('name')}' has two {kind} probes.")
            seen.add(kind)
            for field_name, (low, high) in PROBE_RANGES.items():
                value = probe.get(field_name)
                if value is not None and not low <= value <= high:
                    return _arm_error(
                        "ContainerAppInvalidProbe",
                        f"{kind} probe of container '{container.get('name')}': {field_name} {value} is out of "
                        f"range; the minimum value is {low} and the maximum value is {high}.",
                    )
            if kind in ("Liveness", "Startup") and probe.get("successThreshold", 1) != 1:
                return _arm_error(
                    "ContainerAppInvalidProbe", f"{kind} probe: successThreshold must be 1 for liveness and startup."
                )
    return None


def _environment_errors(current: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """ARM's refusal of workload profiles an existing environment cannot take (see the module docstring)."""
    if current is None:
        return None
    before = (current.get("properties") or {}).get("workloadProfiles")
    after = (new.get("properties") or {}).get("workloadProfiles") or []
    if not before and after:
        return _arm_error(
            "ManagedEnvironmentWorkloadProfilesNotSupported",
            "A Consumption only environment cannot be converted to a workload profiles environment.",
        )
    existing = {(p.get("name"), p.get("workloadProfileType")) for p in before or []}
    for profile in after:
        ident = (profile.get("name"), profile.get("workloadProfileType"))
        if is_gpu_profile_type(str(ident[1] or "")) and ident not in existing:
            return _arm_error(
                "ManagedEnvironmentGpuProfileNotAllowed",
                f"GPU workload profile '{ident[0]}' ({ident[1]}) can only be added when the environment is created.",
            )
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per request
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake: FakeArm = self.server.fake  # type: ignore[attr-defined]
        status, out_headers, payload = fake.handle(self.command, self.path, headers, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("x-ms-request-id", uuid.uuid4().hex)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve
