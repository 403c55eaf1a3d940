"""A fake Azure Resource Manager on loopback HTTPS, for the real management clients to talk to.

Serves the ARM paths that azure-mgmt-appcontainers, azure-mgmt-storage and azure-mgmt-loganalytics call for
provisioning and the container app's lifecycle, keeps resources in memory and behaves like ARM where our code
depends on it:

- every request must carry `api-version` (recorded per provider) and a bearer token, else 400 / 401 with ARM's
  error body;
- long-running PUT / PATCH answer 201 / 202 with an `Azure-AsyncOperation` header; the operation reads InProgress
  once, then Succeeded (or Failed with the scripted error, leaving the resource in provisioningState Failed);
- write-only fields (container app secret values, a Log Analytics shared key, a storage account key) are not
  returned by GET; a container app's secret values come back only from its `listSecrets` action;
- a container app gets a new revision when its template changes; revisions can be listed, read and restarted (a
  restart brings the revision's replicas back); `set_revision(...)` plays the runtime (a crashed replica);
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
import threading
import time
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
        ("list_secrets", _APP + "/listsecrets"),
        ("operation", _SUB + r"/providers/fake\.operations/operations/(?P<op>[^/]+)"),
    ]
]
# Resource kinds with a stored body, their ARM type, how they are written, and fields GET never returns.
_RESOURCES: dict[str, dict[str, Any]] = {
    "storage_account": {"type": "Microsoft.Storage/storageAccounts", "put": 202, "patch": 0, "hidden": []},
    "file_share": {
        "type": "Microsoft.Storage/storageAccounts/fileServices/shares",
        "put": 0,
        "patch": 0,
        "hidden": [],
    },
    "workspace": {"type": "Microsoft.OperationalInsights/workspaces", "put": 201, "hidden": []},
    "environment": {
        "type": "Microsoft.App/managedEnvironments",
        "put": 201,
        "patch": 202,
        "hidden": [("properties", "appLogsConfiguration", "logAnalyticsConfiguration", "sharedKey")],
    },
    "env_storage": {
        "type": "Microsoft.App/managedEnvironments/storages",
        "put": 0,
        "hidden": [("properties", "azureFile", "accountKey")],
    },
    "container_app": {"type": "Microsoft.App/containerApps", "put": 201, "patch": 202, "hidden": []},
}


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
    polls: int = 0
    error: tuple[str, str] | None = None  # (code, message) when scripted to fail


@dataclass
class _State:
    location: str
    resource_groups: set[str]
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-case path -> body
    revisions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # app key -> revisions
    operations: dict[str, _Operation] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)
    failing_operations: list[tuple[str, str, str]] = field(default_factory=list)  # (path part, code, message)
    log: list[RecordedRequest] = field(default_factory=list)
    api_versions: dict[str, set[str]] = field(default_factory=dict)  # provider namespace -> versions seen
    restarts: list[str] = field(default_factory=list)  # revision names restarted
    stalls: list[tuple[str, str, float]] = field(default_factory=list)  # (method, path part, seconds)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # app key -> secret values (write-only)


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

    # --- controls for tests -------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def start(
        cls, tmp_dir: Path, *, location: str = "westus3", resource_groups: tuple[str, ...] = ("rg-test",)
    ) -> Iterator[FakeArm]:
        """Start on 127.0.0.1 (a free port) with a fresh trustme CA; stop on exit."""
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
        """An `ArmConnection` for the real management clients, pointed at this fake (TLS, no LRO wait)."""
        from activities.platform.aca import ArmConnection

        return ArmConnection(subscription_id, resource_group, base_url=self.base_url,
                             connection_verify=self.ca_bundle, polling_interval=0, credential=self.credential)

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
        """Set runtime properties of a revision (`replicas`, `runningState`, `healthState`), as a crash would."""
        with self._lock:
            revision = next(r for r in self._state.revisions[app_path.lower()] if r["name"] == name)
            revision["properties"].update(properties)

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
            record.status = status
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
        if kind != "operation" and rg_key.split("/resourcegroups/")[-1] not in state.resource_groups:
            return 404, {}, _arm_error("ResourceGroupNotFound", "Resource group could not be found.")
        if kind in _RESOURCES:
            return self._resource(kind, method, key, path, api_version, body)
        if kind == "operation" and method == "GET":
            return self._operation(parts["op"])
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
        if kind in ("revision", "restart") and self._exists(app_key):
            revision = next((r for r in state.revisions.get(app_key, []) if r["name"] == parts["rev"]), None)
            if revision is None:
                return (
                    404,
                    {},
                    _arm_error("ContainerAppRevisionNotFound", f"Revision '{parts['rev']}' not found."),
                )
            if kind == "revision" and method == "GET":
                return 200, {}, copy.deepcopy(revision)
            if kind == "restart" and method == "POST":
                state.restarts.append(revision["name"])
                props = revision["properties"]
                if props.get("active"):  # its replicas come back
                    scale = (props.get("template") or {}).get("scale") or {}
                    props.update(replicas=max(1, scale.get("minReplicas") or 0), runningState="Running",
                                 healthState="Healthy")
                return 200, {}, None
        if kind in ("storage_keys", "shared_keys", "revisions", "revision", "restart", "list_secrets"):
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
        if method not in ("PUT", "PATCH") or ("patch" not in spec and method == "PATCH"):
            return 405, {}, _arm_error("MethodNotAllowed", f"{method} is not supported on {path}")
        if not isinstance(body, dict):
            return 400, {}, _arm_error("InvalidRequestContent", "The request content was invalid.")
        if method == "PATCH" and current is None:
            return 404, {}, _arm_error("ResourceNotFound", f"The Resource '{path}' was not found.")
        new = _merge_patch(current, body) if method == "PATCH" else copy.deepcopy(body)
        for read_only in ("id", "name", "type", "systemData"):
            new.pop(read_only, None)
        new.setdefault("properties", {})
        if kind == "container_app":
            error = self._store_app(key, current, new)
            if error:
                return 400, {}, error
        for hidden in spec["hidden"]:
            _drop(new, hidden)
        self._computed(kind, key, path, new)
        mode = spec["patch"] if method == "PATCH" else spec["put"]
        failing = next((f for f in state.failing_operations if f[0] in key), None)
        if failing and mode:
            state.failing_operations.remove(failing)
        new["properties"]["provisioningState"] = "Failed" if failing and mode else "Succeeded"
        state.resources[key] = new
        if not mode:  # synchronous
            return (200 if current is not None else 201), {}, copy.deepcopy(new)
        op_id = uuid.uuid4().hex
        state.operations[op_id] = _Operation(key, error=(failing[1], failing[2]) if failing else None)
        sub = key.split("/resourcegroups/")[0]
        op_url = (
            f"{self.base_url}{sub}/providers/fake.operations/operations/{op_id}?api-version={api_version}"
        )
        return mode, {"Azure-AsyncOperation": op_url, "Retry-After": "0"}, copy.deepcopy(new)

    def _store_app(
        self, key: str, current: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Check identities, keep secret values write-only and cut a new revision when the template changed."""
        state = self._state
        error = _check_identities(new)
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

    def _operation(self, op_id: str) -> tuple[int, dict[str, str], Any]:
        operation = self._state.operations.get(op_id)
        if operation is None:
            return 404, {}, _arm_error("OperationNotFound", f"Operation '{op_id}' not found.")
        operation.polls += 1
        body: dict[str, Any] = {"id": op_id, "name": op_id, "status": "InProgress"}
        if operation.polls > 1:
            body["status"] = "Failed" if operation.error else "Succeeded"
            if operation.error:
                body["error"] = {"code": operation.error[0], "message": operation.error[1]}
        return 200, {"Retry-After": "0"}, body


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
