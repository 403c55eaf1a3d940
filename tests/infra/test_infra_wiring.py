"""The Azure template (infra/*.bicep, azure.yaml, the image workflow) against the code it deploys.

No Bicep CLI here: the Bicep text is read with small regexes (resource declarations, blocks, app settings, role ids)
and checked against what the code reads (app settings, binding connections, host.json), the roles its calls need,
the AI Toolkit files the orchestrator provisions from, and the other deployment files.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from activities.adapter_store import BlobStoreSettings, ShareSettings
from activities.config import (
    CONSUMPTION_GPU_PROFILES,
    DEFAULT_TARGET_MODULES,
    ConfigError,
    InferenceConfig,
    ProvisionParameters,
    Settings,
)
from activities.platform.aca import AcaSettings
from activities.provisioning import ProvisionPlan

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# role -> (built-in role definition id, why the orchestrator needs it, (file, regex) in the code that makes it needed)
ROLE_TABLE: dict[str, tuple[str, str, tuple[str, str]]] = {
    "Storage Blob Data Owner": (
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "Functions host + deployment package + Durable leases (identity AzureWebJobsStorage), blob trigger, uploads read",
        ("orchestrations/starters.py", r"blob_trigger\("),
    ),
    "Storage Queue Data Contributor": (
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "Durable control/work-item queues; the blob trigger's poison queue",
        ("host.json", r'"connectionName": "AzureWebJobsStorage"'),
    ),
    "Storage Table Data Contributor": (
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "Durable history and instances tables (Azure Storage provider)",
        ("host.json", r'"type": "AzureStorage"'),
    ),
    "Key Vault Secrets User": (
        "4633458b-17de-408a-b874-0445c86b69e6",
        "resolve the INFERENCE_API_KEY Key Vault reference (scoped to the one secret)",
        ("activities/config.py", r'_KEY_VAULT_REFERENCE = "@Microsoft\.KeyVault\("'),
    ),
    "Monitoring Metrics Publisher": (
        "3913510d-42f4-4e42-8a64-420c390055eb",
        "Application Insights ingestion with Entra auth (local auth disabled)",
        ("host.json", r'"applicationInsights"'),
    ),
    "Storage Blob Data Contributor": (
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "the person deploying uploads adapters with DefaultAzureCredential (adapters container only)",
        ("adapterctl/cli.py", r"ADAPTERS_ACCOUNT_URL"),
    ),
    "AcrPush": (
        "8311e382-0749-4cb8-b61a-304f252e45ec",
        "GitHub Actions (OIDC) pushes the inference image",
        (".github/workflows/inference-image.yml", r"az acr login"),
    ),
    "AcrPull": (
        "7f951dda-4ed3-4680-a7ca-43fe172d538d",
        "the pull identity (not the orchestrator's): the container app pulls INFERENCE_IMAGE with it",
        ("activities/platform/aca.py", r'configuration\["registries"\] = \[\{"server": .*"identity": pull\}\]'),
    ),
    "Managed Identity Operator": (
        "f1a07417-d97a-45cb-824c-7a7467783830",
        "userAssignedIdentities/assign/action: put the pull identity on the container app (scoped to that identity)",
        ("activities/platform/aca.py", r'"userAssignedIdentities": \{pull: \{\}\}'),
    ),
    "Container Apps Contributor": (
        "358470bc-b998-42bd-ab17-a7e34c199c0f",
        "create/patch the inference container app, restart its revision",
        ("activities/platform/aca.py", r"container_apps\.begin_create_or_update|restart_revision"),
    ),
    "Container Apps ManagedEnvironments Contributor": (
        "57cc5028-e6a7-4284-868d-0611c5923f8d",
        "create/patch the managed environment and its Azure Files storage (not in Container Apps Contributor)",
        ("activities/provisioning.py", r"managed_environments_storages|environments\.begin_create_or_update"),
    ),
    "Storage Account Contributor": (
        "17d1049b-9a84-46fb-8f53-869881c3d3ab",
        "create the inference storage account and share; list its keys for the environment storage",
        ("activities/provisioning.py", r"storage_accounts\.list_keys"),
    ),
    "Log Analytics Contributor": (
        "92aaf0da-9dab-42b6-94a3-d43ce8d16293",
        "create the workspace; workspaces/sharedKeys/action (Log Analytics Reader excludes the shared keys)",
        ("activities/provisioning.py", r"shared_keys\.get_shared_keys"),
    ),
    "Storage File Data Privileged Contributor": (
        "69566ab7-960f-475b-8e7c-b3118f30c6bd",
        "stage adapters and manifest.json on the share over OAuth (backup intent)",
        ("activities/adapter_store.py", r'token_intent="backup"'),
    ),
    "Durable Task Data Contributor": (
        "0ad04412-c4d5-4796-b79c-f76d14c8d402",
        "durableBackend DurableTaskScheduler: the Durable extension runs the app's orchestrations in the task hub",
        ("function_app.py", r"df\.DFApp\("),
    ),
}

# (scope symbol in main.bicep, role) for the assignments main.bicep makes itself.
MAIN_ASSIGNMENTS = {
    ("storage", "Storage Blob Data Owner"),
    ("storage", "Storage Queue Data Contributor"),
    ("storage", "Storage Table Data Contributor"),
    ("apiKeySecret", "Key Vault Secrets User"),
    ("appInsights", "Monitoring Metrics Publisher"),
    ("adaptersContainer", "Storage Blob Data Contributor"),
    ("registry", "AcrPush"),
    ("registry", "AcrPull"),
    ("pullIdentity", "Managed Identity Operator"),
    ("taskHub", "Durable Task Data Contributor"),
}
# Who gets each of main.bicep's assignments; any other goes to the orchestrator's identity.
MAIN_PRINCIPALS = {
    ("registry", "AcrPush"): "githubPrincipalId",
    ("adaptersContainer", "Storage Blob Data Contributor"): "principalId",
    ("registry", "AcrPull"): "pullIdentity.properties.principalId",
}
# App settings that name the image's registry and the identity that pulls from it.
PULL_SETTINGS = {
    "INFERENCE_REGISTRY_SERVER": "registry.properties.loginServer",
    "INFERENCE_PULL_IDENTITY_ID": "pullIdentity.id",
}
# Assigned on the inference resource group by modules/inference-access.bicep.
INFERENCE_RG_ROLES = {
    "Container Apps Contributor",
    "Container Apps ManagedEnvironments Contributor",
    "Storage Account Contributor",
    "Log Analytics Contributor",
    "Storage File Data Privileged Contributor",
}

# Settings the code reads that the template leaves unset on purpose, with the reason.
OPTIONAL_SETTINGS: dict[str, str] = {
    "ADAPTER_STORAGE_CONNECTION_STRING": "connection-string alternative to managed identity; not used in Azure",
    "AdaptersStorage": "connection-string form of the blob trigger connection (devhost, Azurite); Azure uses AdaptersStorage__blobServiceUri with the identity",
    "STORAGE_API_VERSION": "pins an older service version for the emulator only",
    "ARM_ENDPOINT": "tests only: points ARM at the fake server",
    "ARM_CA_BUNDLE": "tests only: the fake ARM's CA bundle",
    "GPU_WORKLOAD_PROFILE_TYPE": "only for a dedicated GPU profile; the template uses a Consumption-GPU-* profile",
    "GPU_WORKLOAD_PROFILE_MIN_COUNT": "only for a dedicated GPU profile",
    "GPU_WORKLOAD_PROFILE_MAX_COUNT": "only for a dedicated GPU profile",
    "INFERENCE_SYNC_INTERVAL_S": "local platform only (the local server's sync interval)",
    "DEVHOST_STATE_DIR": "local platform only (devhost)",
    "ADAPTER_STORE_PATH": "local platform only (staging folder)",
    "LOCAL_INFERENCE_PORT": "local platform only",
    "LOCAL_RUNTIME": "local platform only (process or container)",
    "LOCAL_REPLICAS": "local platform only (replicas per app; ACA scales by the template's maximumInstanceCount)",
    "CHAT_PAGE_ENABLED": "local platform only: set for the server it starts (the image's start.sh runs it alone)",
    "CONTAINER_APP_REPLICA_NAME": "local platform only: set for the server it starts, as ACA sets it per replica",
    "CONTAINER_APP_REVISION": "local platform only: set for the server it starts, as ACA sets it per replica",
    "LOCAL_INFERENCE_IMAGE": "local platform only (the container runtime's image)",
    "PYTHONPATH": "local platform only: the child server's import path, not an app setting",
    "ROLLOUT_POLL_INTERVAL_S": "RolloutTiming default (1 s) suits Azure",
    "ROLLOUT_HOT_SWAP_TIMEOUT_S": "RolloutTiming default (60 s) suits Azure",
    "ROLLOUT_RESTART_TIMEOUT_S": "RolloutTiming default (900 s) covers a GPU replica restart",
    "ROLLOUT_VERIFY_ATTEMPTS": "RolloutTiming default",
    "RECONCILE_HEAL_INTERVAL_S": "RolloutTiming default",
    "RECONCILE_RETRY_BASE_S": "RolloutTiming default",
    "SUBSCRIPTION_ID": "InferenceConfig.from_env only; the app reads infra/inference.config.json (INFERENCE_CONFIG_PATH)",
    "RESOURCE_GROUP_NAME": "InferenceConfig.from_env only; read from INFERENCE_CONFIG_PATH",
    "ACA_APP_NAME": "InferenceConfig.from_env only; the app name comes from the route / blob path",
    "ACA_APP_ENDPOINT": "InferenceConfig.from_env only; the provision orchestration's outcome carries it",
}
# App settings the template sets that the platform or SDKs read rather than our code.
PLATFORM_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Functions host telemetry (no credential: local auth is disabled)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Entra auth for telemetry with the user-assigned identity",
    "AZURE_CLIENT_ID": "azure-identity's DefaultAzureCredential picks the user-assigned identity",
}
# Binding connections: identity-based settings each needs (Event Grid blob trigger needs blob + queue endpoints).
CONNECTION_SETTINGS = {
    "AzureWebJobsStorage": {"__accountName", "__credential", "__clientId"},
    "AdaptersStorage": {"__blobServiceUri", "__queueServiceUri", "__credential", "__clientId"},
}
# Resource types only the provision orchestration writes (activities/provisioning.py, activities/platform/aca.py).
PROVISIONED_TYPES = {
    "Microsoft.App/managedEnvironments",
    "Microsoft.App/managedEnvironments/storages",
    "Microsoft.App/containerApps",
    "Microsoft.Storage/storageAccounts/fileServices/shares",
}


# --- a small Bicep reader -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: str


def _block(text: str, start: int) -> str:
    """The balanced `{...}` or `[...]` starting at text[start] (quotes respected)."""
    pairs = {"{": "}", "[": "]"}
    stack: list[str] = []
    in_str = False
    i = start
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == "'":
                in_str = False
        elif c == "'":
            in_str = True
        elif c in pairs:
            stack.append(pairs[c])
        elif c in "}]":
            assert stack and stack[-1] == c, f"unbalanced {c!r} at {i}"
            stack.pop()
            if not stack:
                return text[start : i + 1]
        i += 1
    raise AssertionError("unterminated block")


def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"\s//.*$|^\s*//.*$", "", line) for line in text.splitlines())


def bicep(path: Path) -> str:
    return _strip_comments(path.read_text(encoding="utf-8"))


def resources(text: str) -> list[Resource]:
    found = []
    pattern = r"^resource (\w+) '([^'@]+)@([^']+)'( existing)? = (?:if \([^\n]*\) )?(\[for [^\n]*?: )?\{"
    for m in re.finditer(pattern, text, re.M):
        found.append(Resource(m[1], m[2], m[3], bool(m[4]), _block(text, m.end() - 1)))
    return found


def params(text: str) -> dict[str, str | None]:
    """param name -> default expression (None when required)."""
    return {m[1]: (m[2].strip() if m[2] else None) for m in re.finditer(r"^param (\w+) \w+(?: = (.+))?$", text, re.M)}


def outputs(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^output (\w+) \w+ = (.+)$", text, re.M)}


def block_entries(block: str) -> dict[str, str]:
    """Top-level `key: value` lines of an object block (values of nested blocks are returned as blocks)."""
    inner = block[1:-1]
    entries: dict[str, str] = {}
    i = 0
    for m in re.finditer(r"^\s*'?([\w.-]+)'?: ", inner, re.M):
        if m.start() < i:
            continue
        value_start = m.end()
        if inner[value_start] in "{[":
            value = _block(inner, value_start)
        else:
            value = inner[value_start:].split("\n", 1)[0].strip()
        entries[m[1]] = value
        i = value_start + len(value)
    return entries


def prop(body: str, key: str) -> str:
    entries = block_entries(body)
    assert key in entries, f"{key!r} not in block"
    return entries[key]


def main_text() -> str:
    return bicep(MAIN)


def main_resources() -> dict[str, Resource]:
    return {r.symbol: r for r in resources(main_text())}


def app_settings() -> dict[str, str]:
    """The app settings every deployment gets (the first argument of the site config's `union(...)`)."""
    settings = [r for r in resources(main_text()) if r.type == "Microsoft.Web/sites/config"]
    assert len(settings) == 1, "one Microsoft.Web/sites/config resource holds the app settings"
    body = settings[0].body
    assert "name: 'appsettings'" in body
    m = re.search(r"^  properties: union\(\{", body, re.M)
    assert m, "app settings are union(<always>, durableTaskSchedulerSettings)"
    always = _block(body, m.end() - 1)
    assert body[m.end() - 1 + len(always):].startswith(", durableTaskSchedulerSettings)\n")
    return block_entries(always)


def dts_settings() -> dict[str, str]:
    """The app settings added when durableBackend is DurableTaskScheduler (`{}` otherwise)."""
    text = main_text()
    m = re.search(r"^var durableTaskSchedulerSettings = useDurableTaskScheduler \? \{", text, re.M)
    assert m
    block = _block(text, m.end() - 1)
    assert text[m.end() - 1 + len(block):].startswith(" : {}\n"), "no scheduler settings with Azure Storage"
    return block_entries(block)


def var_literal(name: str) -> str:
    m = re.search(rf"^var {re.escape(name)} = '([^'$]*)'$", main_text(), re.M)
    assert m, name
    return m[1]


def _literal(expr: str) -> str | None:
    m = re.fullmatch(r"'([^'$]*)'", expr.strip())
    return m[1] if m else None


def _default(expr: str, defaults: dict[str, str | None]) -> str:
    """A rough value for an app setting expression: literals and parameter defaults; else `<expression>`."""
    expr = expr.strip()

    def value_of(name: str) -> str:
        default = defaults.get(name)
        if default is not None:
            return _literal(default) if _literal(default) is not None else default
        var = re.search(rf"^var {re.escape(name)} = (.+)$", main_text(), re.M)
        if var and _literal(var[1]) is not None:
            return _literal(var[1])  # type: ignore[return-value]
        return f"<{name}>"

    if re.fullmatch(r"'[^']*'", expr):
        return re.sub(r"\$\{([^}]+)\}", lambda m: value_of(m[1]), expr[1:-1])
    m = re.fullmatch(r"(?:string\()?([\w.]+)\)?", expr)
    return value_of(m[1]) if m else f"<{expr}>"


def evaluated_settings() -> dict[str, str]:
    """The app settings with literals and parameter defaults filled in, the rest as `<expression>`."""
    defaults = params(main_text())
    return {k: _default(v, defaults) for k, v in app_settings().items()}


# --- what the code reads ----------------------------------------------------------------------------------------------


def _env_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Name) and node.id == "env":
        return True
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def code_settings() -> dict[str, str]:
    """App settings read in activities/ and orchestrations/ -> where (env.get / env[...] / _text / _int / key tables)."""
    found: dict[str, str] = {}
    for path in sorted([*ROOT.glob("activities/**/*.py"), *ROOT.glob("orchestrations/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call):
                f = node.func
                args = node.args
                if isinstance(f, ast.Attribute) and f.attr == "get" and _env_name(f.value) and args:
                    key = args[0]
                elif isinstance(f, ast.Name) and f.id in ("_text", "_int") and len(args) > 1 and _env_name(args[0]):
                    key = args[1]
            elif isinstance(node, ast.Subscript) and _env_name(node.value):
                key = node.slice
            elif isinstance(node, ast.FunctionDef) and node.name == "from_env":
                # key tables read inside from_env (RolloutTiming: {"poll_interval_s": "ROLLOUT_POLL_INTERVAL_S", ...})
                # and `key = "GPU_WORKLOAD_PROFILE"` then env.get(key)
                for sub in ast.walk(node):
                    values = sub.values if isinstance(sub, ast.Dict) else [sub.value] if isinstance(sub, ast.Assign) else []
                    for v in values:
                        if isinstance(v, ast.Constant) and isinstance(v.value, str):
                            if re.fullmatch(r"[A-Z][A-Z0-9_]+", v.value):
                                found.setdefault(v.value, where)
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.setdefault(key.value, where)
    # InferenceConfig.from_env reads the template's keys through from_dict.
    for key in InferenceConfig.KEYS.values():
        found.setdefault(key, "activities/config.py (InferenceConfig.from_env)")
    return found


def binding_connections() -> dict[str, str]:
    """Connection names the triggers and host.json use -> where."""
    starters = (ROOT / "orchestrations/starters.py").read_text(encoding="utf-8")
    found = {m[1]: "orchestrations/starters.py" for m in re.finditer(r'_CONNECTION = "(\w+)"', starters)}
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    found[host["extensions"]["durableTask"]["storageProvider"]["connectionName"]] = "host.json"
    found.setdefault("AzureWebJobsStorage", "Functions host")
    return found


def host_json_settings() -> set[str]:
    """App settings host.json reads as %NAME%."""
    return set(re.findall(r"%(\w+)%", (ROOT / "host.json").read_text(encoding="utf-8")))


def starters_constant(name: str) -> str:
    text = (ROOT / "orchestrations/starters.py").read_text(encoding="utf-8")
    m = re.search(rf'^{name} = "([^"]+)"', text, re.M)
    assert m, name
    return m[1]


# --- app settings -----------------------------------------------------------------------------------------------------


def test_code_reads_the_settings_this_test_knows():
    """The scan finds the keys we know the code reads (guards the scan itself)."""
    found = code_settings()
    for key in ("PLATFORM", "INFERENCE_IMAGE", "BASE_MODEL_NAME", "STORAGE_ACCOUNT_NAME", "ADAPTERS_CONTAINER",
                "ROLLOUT_POLL_INTERVAL_S", "AdaptersStorage", "INFERENCE_API_KEY"):
        assert key in found, key


def test_every_setting_the_code_reads_is_set_or_listed_optional():
    """Each app setting read in activities/ and orchestrations/ is set by main.bicep or listed optional with a reason."""
    settings = app_settings()
    missing = {k: w for k, w in code_settings().items() if k not in settings and k not in OPTIONAL_SETTINGS}
    assert not missing, f"read by the code, not set by infra/main.bicep: {missing}"


def test_optional_list_has_no_stale_entries():
    """Every 'optional' setting is still read by the code, and none is also set (one or the other)."""
    read = code_settings()
    settings = app_settings()
    assert sorted(k for k in OPTIONAL_SETTINGS if k not in read) == []
    assert sorted(k for k in OPTIONAL_SETTINGS if k in settings) == []


def test_every_app_setting_has_a_reader():
    """No orphan app setting: each is read by the code, a binding/host.json connection, or the platform."""
    read = code_settings()
    connections = binding_connections()
    orphans = [
        k for k in app_settings()
        if k not in read and k not in PLATFORM_SETTINGS and k.split("__")[0] not in connections
        and k not in host_json_settings()
    ]
    assert orphans == []


def test_binding_connections_are_identity_based():
    """AzureWebJobsStorage (Durable, host) and AdaptersStorage (blob trigger) use the managed identity, no strings."""
    settings = app_settings()
    assert set(binding_connections()) == set(CONNECTION_SETTINGS)
    for connection, suffixes in CONNECTION_SETTINGS.items():
        assert connection not in settings, f"{connection} would be a connection string"
        for suffix in suffixes:
            assert connection + suffix in settings, connection + suffix
        assert settings[connection + "__credential"] == "'managedidentity'"
        assert settings[connection + "__clientId"] == "identity.properties.clientId"
    assert settings["AZURE_CLIENT_ID"] == "identity.properties.clientId"


def test_host_json_task_hub_setting_is_set():
    """host.json's %DURABLE_TASK_HUB% resolves from an app setting, with the devhost's default hub name."""
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    hub = host["extensions"]["durableTask"]["hubName"]
    assert hub == "%DURABLE_TASK_HUB%"
    assert evaluated_settings()["DURABLE_TASK_HUB"] == "adapterdeploy"
    local = json.loads((ROOT / "local.settings.example.json").read_text(encoding="utf-8"))["Values"]
    assert local["DURABLE_TASK_HUB"] == "adapterdeploy"


def test_settings_from_env_accepts_the_template():
    """Settings.from_env reads the template's settings as PLATFORM=aca with the defaults the code expects."""
    login_server = "cradapters0123.azurecr.io"
    pull_id = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-adapters-prod/providers"
               "/Microsoft.ManagedIdentity/userAssignedIdentities/id-adapters-pull-0123")
    deployed = {"<registry.properties.loginServer>": login_server, "<pullIdentity.id>": pull_id}
    env = {k: re.sub(r"<[\w.]+>", lambda m: deployed.get(m[0], m[0]), v) for k, v in evaluated_settings().items()}
    env["INFERENCE_API_KEY"] = "resolved-by-app-service-0123456789"
    assert {k: app_settings()[k] for k in PULL_SETTINGS} == PULL_SETTINGS
    s = Settings.from_env(env)
    assert s.platform == "aca"
    assert s.inference_image == f"{login_server}/inference:latest"
    assert s.inference_registry_server == login_server and s.inference_pull_identity_id == pull_id
    assert s.workload_profile.type in CONSUMPTION_GPU_PROFILES
    assert s.model_path == Settings.model_path
    assert s.model_path.startswith(AcaSettings.mount_path + "/")
    assert s.max_lora_rank == Settings.max_lora_rank
    assert set(DEFAULT_TARGET_MODULES) <= set(s.allowed_target_modules)
    assert env["ADAPTERS_CONTAINER"] == starters_constant("MARKER_PATH").split("/")[0]
    assert s.inference_config_path == Settings.inference_config_path
    assert s.parameters_path == Settings.parameters_path
    assert (ROOT / s.inference_config_path).is_file() and (ROOT / s.parameters_path).is_file()


def test_api_key_is_a_key_vault_reference_the_code_recognises():
    """INFERENCE_API_KEY is a Key Vault reference; left unresolved, Settings.from_env names it (not a silent key)."""
    settings = app_settings()
    assert settings["INFERENCE_API_KEY"].startswith("'@Microsoft.KeyVault(SecretUri=${apiKeySecret.properties")
    site = main_resources()["functionApp"].body
    assert "keyVaultReferenceIdentity: identity.id" in site
    vault = main_resources()["vault"].body
    assert "enableRbacAuthorization: true" in vault
    env = evaluated_settings()
    with pytest.raises(ConfigError, match="INFERENCE_API_KEY"):
        Settings.from_env(env)


def test_share_settings_point_at_the_provisioned_share():
    """ShareSettings.from_env on the template's settings targets the share the provision orchestration creates."""
    config = InferenceConfig.load(INFRA / "inference.config.json")
    params_ = ProvisionParameters.load(INFRA / "provision/inference.parameters.json")
    plan = ProvisionPlan.build(config, params_, Settings(base_model_name="m", platform="aca", inference_image="i"), "x")
    text = main_text()
    assert "STORAGE_ACCOUNT_NAME: inferenceStorageAccountName" in text
    assert "FILE_SHARE_NAME: inferenceFileShareName" in text
    env = {"STORAGE_ACCOUNT_NAME": plan.file_share.account_name, "FILE_SHARE_NAME": plan.file_share.share_name}
    share = ShareSettings.from_env(env)
    assert share.account_url == f"https://{plan.file_share.account_name}.file.core.windows.net"
    assert share.share_name == plan.file_share.share_name


def test_bicep_resolves_inference_names_like_the_provisioner():
    """main.bicep reads the template's files and resolves null parameters to inference.config.json as the code does."""
    text = main_text()
    assert "loadJsonContent('inference.config.json')" in text
    assert "loadJsonContent('provision/inference.parameters.json').parameters" in text
    assert re.search(r"inferenceStorageAccountName = inferenceParameters\.storageAccountName\.value "
                     r"\?\? inferenceConfig\.STORAGE_ACCOUNT_NAME", text)
    assert re.search(r"inferenceFileShareName = inferenceParameters\.fileShareName\.value "
                     r"\?\? inferenceConfig\.FILE_SHARE_NAME", text)
    assert "inferenceResourceGroupName = inferenceConfig.RESOURCE_GROUP_NAME" in text
    assert "inferenceSubscriptionId = inferenceConfig.SUBSCRIPTION_ID" in text


def test_blob_store_reads_uploads_from_the_adapters_account():
    """The activities' blob store, built from the template's settings, reads the account the uploads land in."""
    env = evaluated_settings()
    env["ADAPTERS_ACCOUNT_URL"] = "https://stadapters0123.blob.core.windows.net/"
    env["STORAGE_ACCOUNT_NAME"] = "stfinetune001"
    store = BlobStoreSettings.from_env(env)
    assert store.account_url and store.account_url.rstrip("/") == env["ADAPTERS_ACCOUNT_URL"].rstrip("/")
    assert store.container == env["ADAPTERS_CONTAINER"]


# --- secrets --------------------------------------------------------------------------------------------------------


def test_no_keys_or_connection_strings_in_app_settings():
    """App settings carry no account keys, SAS or connection strings (App Insights' has no credential, see below)."""
    settings = app_settings()
    # the one exception: App Insights' connection string only locates the ingestion endpoint once local auth is off
    assert settings.pop("APPLICATIONINSIGHTS_CONNECTION_STRING") == "appInsights.properties.ConnectionString"
    assert "DisableLocalAuth: true" in main_resources()["appInsights"].body
    for name, value in settings.items():
        assert not re.search(r"listKeys|AccountKey|SharedAccessSignature|primaryKey|connectionString|sig=",
                             value, re.I), name
        assert "CONNECTION_STRING" not in name.upper(), name


def test_identity_only_resources():
    """Storage refuses shared keys, the registry has no admin user, and listKeys appears only for the webhook key."""
    res = main_resources()
    assert "allowSharedKeyAccess: false" in res["storage"].body
    assert "allowBlobPublicAccess: false" in res["storage"].body
    assert "minimumTlsVersion: 'TLS1_2'" in res["storage"].body
    assert "adminUserEnabled: false" in res["registry"].body
    uses = [p.name for p in INFRA.rglob("*.bicep") if "listKeys" in bicep(p)]
    assert uses == ["blob-events.bicep"]
    assert "hostKeys.listKeys().systemKeys.blobs_extension" in bicep(MODULES / "blob-events.bicep")


def test_image_pull_uses_a_dedicated_identity():
    """The registry is private; a separate identity with AcrPull alone pulls, and the orchestrator may only assign it."""
    text = main_text()
    res = main_resources()
    assert "anonymousPullEnabled: false" in res["registry"].body
    assert "acrAnonymousPullEnabled" not in text
    assert "acrAnonymousPullEnabled" not in (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    assert prop(res["pullIdentity"].body, "name") != prop(res["identity"].body, "name")
    by_id = {guid: name for name, (guid, _, _) in ROLE_TABLE.items()}
    roles = _role_vars(text)
    granted: dict[str, set[str]] = {}  # principal -> roles main.bicep grants it (the module grants no ACR role)
    for r in resources(text):
        if r.type == "Microsoft.Authorization/roleAssignments":
            key = re.search(r"roles\.(\w+)", r.body)
            assert key, r.symbol
            granted.setdefault(prop(prop(r.body, "properties"), "principalId"), set()).add(by_id[roles[key[1]]])
    assert granted["pullIdentity.properties.principalId"] == {"AcrPull"}
    assert "AcrPull" not in granted["identity.properties.principalId"]
    assert "Managed Identity Operator" in granted["identity.properties.principalId"]
    operator = next(r for r in resources(text) if "roles.managedIdentityOperator" in r.body)
    assert prop(operator.body, "scope") == "pullIdentity"
    assert "pullIdentity.id" not in prop(res["functionApp"].body, "identity")


# --- roles ----------------------------------------------------------------------------------------------------------


def _role_vars(text: str) -> dict[str, str]:
    """The `var roles = {name: 'guid'}` table of a Bicep file ({} when it has none)."""
    m = re.search(r"^var roles = \{", text, re.M)
    if not m:
        return {}
    return {k: v.strip("'") for k, v in block_entries(_block(text, m.end() - 1)).items()}


def test_role_table_reasons_still_hold_in_the_code():
    """Each role's reason is still in the code (a call that stops needing a role shows up here)."""
    for role, (_, _, (file, pattern)) in ROLE_TABLE.items():
        assert re.search(pattern, (ROOT / file).read_text(encoding="utf-8")), f"{role}: {pattern} not in {file}"


def test_role_ids_are_exactly_the_table():
    """The Bicep assigns only role ids from the table, and every one of them."""
    ids = {guid for guid, _, _ in ROLE_TABLE.values()}
    used = set()
    for path in INFRA.rglob("*.bicep"):
        text = bicep(path)
        used |= set(_role_vars(text).values())
        assert set(re.findall(GUID, text)) <= ids, path.name  # no role id outside the table
    assert used == ids
    assert _role_vars(main_text()) and _role_vars(bicep(MODULES / "inference-access.bicep"))
    for guid in used:
        assert re.fullmatch(GUID, guid)


def test_main_assigns_each_role_on_its_resource():
    """main.bicep's role assignments: the right role on the right resource, granted to the right principal."""
    text = main_text()
    by_id = {guid: name for name, (guid, _, _) in ROLE_TABLE.items()}
    roles = _role_vars(text)
    got = set()
    for r in resources(text):
        if r.type != "Microsoft.Authorization/roleAssignments":
            continue
        scope = prop(r.body, "scope")
        key = re.search(r"roles\.(\w+)", prop(prop(r.body, "properties"), "roleDefinitionId"))
        assert key, r.symbol
        assignment = (scope, by_id[roles[key[1]]])
        got.add(assignment)
        principal = prop(prop(r.body, "properties"), "principalId")
        assert principal == MAIN_PRINCIPALS.get(assignment, "identity.properties.principalId"), r.symbol
        assert "subscriptionResourceId('Microsoft.Authorization/roleDefinitions'" in r.body
    assert got == MAIN_ASSIGNMENTS


def test_inference_resource_group_roles():
    """The orchestrator's identity gets the five roles its provisioning calls need, on the inference resource group."""
    text = bicep(MODULES / "inference-access.bicep")
    by_id = {guid: name for name, (guid, _, _) in ROLE_TABLE.items()}
    assert {by_id[g] for g in _role_vars(text).values()} == INFERENCE_RG_ROLES
    assert "Log Analytics Reader" not in ROLE_TABLE  # it excludes workspaces/sharedKeys: not enough
    assert "b24988ac-6180-42a0-ab88-20f7382dd24c" not in text  # not plain Contributor
    module = re.search(r"^module inferenceAccess 'modules/inference-access\.bicep' = \{", main_text(), re.M)
    assert module
    body = _block(main_text(), module.end() - 1)
    assert prop(body, "scope") == "resourceGroup(inferenceSubscriptionId, inferenceResourceGroupName)"
    assert "principalId: identity.properties.principalId" in body


# --- names line up ----------------------------------------------------------------------------------------------------


def test_parameters_file_matches_bicep_params():
    """main.parameters.json names only params main.bicep declares, and gives every required one."""
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    declared = params(main_text())
    given = set(data["parameters"])
    assert given <= set(declared), given - set(declared)
    required = {name for name, default in declared.items() if default is None}
    assert required <= given, required - given


def test_parameters_file_defaults_match_bicep_defaults():
    """`${VAR=default}` in main.parameters.json agrees with the param's default in main.bicep."""
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    declared = params(main_text())
    for name, entry in data.items():
        m = re.fullmatch(r"\$\{(\w+)(?:=(.*))?\}", str(entry["value"]))
        assert m, f"{name}: expected an azd ${{VAR}} placeholder"
        if m[2] is not None:
            default = declared[name]
            assert default is not None, name
            assert (_literal(default) or default) == m[2], name


def test_bicep_modules_and_loaded_files_exist():
    """Every module and loadJsonContent path in the Bicep files exists."""
    for path in INFRA.rglob("*.bicep"):
        text = bicep(path)
        for ref in re.findall(r"^module \w+ '([^']+)'", text, re.M):
            assert (path.parent / ref).is_file(), ref
        for ref in re.findall(r"loadJsonContent\('([^']+)'\)", text):
            assert (path.parent / ref).is_file(), ref


def test_module_params_match_module_declarations():
    """Params passed to each module are the params it declares, required ones included."""
    text = main_text()
    for m in re.finditer(r"^module \w+ '([^']+)' = (?:if \([^\n]*\) )?\{", text, re.M):
        declared = params(bicep(INFRA / m[1]))
        given = set(block_entries(prop(_block(text, m.end() - 1), "params")))
        assert given <= set(declared), (m[1], given - set(declared))
        assert {n for n, d in declared.items() if d is None} <= given, m[1]


def test_azure_yaml_points_at_the_template_and_the_app():
    """azure.yaml: infra/main.bicep, and a Python Functions service whose folder is the app and whose tag is on the site."""
    data = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    infra = data["infra"]
    assert infra["provider"] == "bicep"
    assert (ROOT / infra["path"] / f"{infra['module']}.bicep") == MAIN
    assert len(data["services"]) == 1
    (name, service), = data["services"].items()
    assert service["language"] == "python" and service["host"] == "function"
    project = ROOT / service["project"]
    for file in ("function_app.py", "host.json", "requirements.txt"):
        assert (project / file).is_file(), file
    assert f"'azd-service-name': '{name}'" in main_resources()["functionApp"].body


def test_flex_consumption_function_app():
    """The site is a Linux Flex Consumption (FC1) Python 3.11 app deploying from a blob container with the identity."""
    res = main_resources()
    plan, site = res["plan"], res["functionApp"]
    assert plan.type == "Microsoft.Web/serverfarms"
    assert "name: 'FC1'" in plan.body and "tier: 'FlexConsumption'" in plan.body
    assert "reserved: true" in plan.body
    assert site.type == "Microsoft.Web/sites"
    assert prop(site.body, "kind") == "'functionapp,linux'"
    config = prop(prop(site.body, "properties"), "functionAppConfig")
    runtime = prop(config, "runtime")
    assert prop(runtime, "name") == "'python'" and prop(runtime, "version") == "'3.11'"
    storage = prop(prop(config, "deployment"), "storage")
    assert prop(storage, "type") == "'blobContainer'"
    assert "deploymentContainer.name" in prop(storage, "value")
    assert prop(prop(storage, "authentication"), "type") == "'UserAssignedIdentity'"
    assert "'UserAssigned'" in prop(site.body, "identity")
    # Flex Consumption rejects these as app settings (functionAppConfig carries them)
    for name in ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"):
        assert name not in app_settings()
    assert "requires-python = \">=3.11\"" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_storage_containers_and_blob_trigger_line_up():
    """The adapters container, the trigger's path, its function name and the Event Grid filter agree."""
    marker_path = starters_constant("MARKER_PATH")
    container, *_, last = marker_path.split("/")
    text = main_text()
    assert re.search(rf"^var adaptersContainerName = '{container}'$", text, re.M)
    assert last == "_COMPLETE"
    starters = (ROOT / "orchestrations/starters.py").read_text(encoding="utf-8")
    fn = re.search(r"@bp\.blob_trigger\([^\n]*source=func\.BlobSource\.EVENT_GRID\)\n(?:@[^\n]*\n)*async def (\w+)",
                   starters)
    assert fn, "the blob trigger uses the Event Grid source"
    assert re.search(rf"^var blobTriggerFunctionName = '{fn[1]}'$", text, re.M)
    events = bicep(MODULES / "blob-events.bicep")
    sub = [r for r in resources(events) if r.type == "Microsoft.EventGrid/systemTopics/eventSubscriptions"]
    assert len(sub) == 1
    filt = prop(prop(sub[0].body, "properties"), "filter")
    assert "'Microsoft.Storage.BlobCreated'" in prop(filt, "includedEventTypes")
    assert prop(filt, "subjectBeginsWith") == "'/blobServices/default/containers/${containerName}/'"
    assert prop(filt, "subjectEndsWith") == f"'/{last}'"
    assert ("'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs"
            "?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'") in events
    assert prop(prop(sub[0].body, "properties"), "destination").count("'WebHook'") == 1
    topic = main_resources()["systemTopic"]
    assert prop(prop(topic.body, "properties"), "source") == "storage.id"
    assert prop(prop(topic.body, "properties"), "topicType") == "'Microsoft.Storage.StorageAccounts'"
    module = re.search(r"^module blobEvents 'modules/blob-events\.bicep' = if \(enableBlobEvents\) \{", text, re.M)
    assert module
    body = _block(text, module.end() - 1)
    assert "containerName: adaptersContainerName" in body
    assert "functionName: blobTriggerFunctionName" in body


def test_adapterctl_env_names_are_outputs():
    """azd outputs ADAPTERCTL_URL and ADAPTERS_ACCOUNT_URL, the env names adapterctl reads."""
    cli = (ROOT / "adapterctl/cli.py").read_text(encoding="utf-8")
    outs = outputs(main_text())
    for name in ("ADAPTERCTL_URL", "ADAPTERS_ACCOUNT_URL"):
        assert f'env("{name}"' in cli
        assert name in outs
    assert "AZURE_CLIENT_ID" not in outs  # would steer the developer's own DefaultAzureCredential


def test_workflow_builds_the_inference_image_context():
    """The workflow builds inference_image/ with its Dockerfile, logs in with OIDC, and pushes `inference:<tag>`."""
    data = yaml.safe_load((ROOT / ".github/workflows/inference-image.yml").read_text(encoding="utf-8"))
    assert data["permissions"]["id-token"] == "write"
    steps = [s for job in data["jobs"].values() for s in job["steps"]]
    build = [s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert len(build) == 1
    context = build[0]["with"]["context"]
    assert (ROOT / context / "Dockerfile").is_file() and context == "inference_image"
    assert (ROOT / build[0]["with"]["file"]) == ROOT / context / "Dockerfile"
    login = [s for s in steps if str(s.get("uses", "")).startswith("azure/login@")]
    assert len(login) == 1
    assert set(login[0]["with"]) == {"client-id", "tenant-id", "subscription-id"}  # OIDC: no secret, no creds JSON
    text = (ROOT / ".github/workflows/inference-image.yml").read_text(encoding="utf-8")
    assert "secrets." not in text
    assert data["env"]["IMAGE_NAME"] == "inference"
    assert "/inference:${inferenceImageTag}'" in app_settings()["INFERENCE_IMAGE"]
    on = data.get("on", data.get(True))
    assert "inference_image/**" in on["push"]["paths"]


# --- the split: never a resource the orchestrator provisions ----------------------------------------------------------


def _template_names() -> set[str]:
    config = InferenceConfig.load(INFRA / "inference.config.json")
    params_ = ProvisionParameters.load(INFRA / "provision/inference.parameters.json")
    plan = ProvisionPlan.build(config, params_, Settings(base_model_name="m", platform="aca", inference_image="i"), "x")
    names = {
        plan.storage_account.account_name,
        plan.file_share.share_name,
        plan.log_analytics.workspace_name,
        plan.environment.environment_name,
        plan.environment_storage.storage_name,
        plan.container_app.app,
    }
    names |= {v for v in config.to_dict().values() if v}
    names |= {v for v in params_.to_dict()["parameters"].values() if isinstance(v.get("value"), str)}
    return names


def test_bicep_declares_no_provisioned_resource_type():
    """No Bicep file declares (creates) a managed environment, its storage, a container app or a file share."""
    for path in INFRA.rglob("*.bicep"):
        for r in resources(bicep(path)):
            if not r.existing:
                assert r.type not in PROVISIONED_TYPES, f"{path.name}: {r.symbol} ({r.type})"


def test_bicep_resource_names_never_match_provisioned_names():
    """Resources main.bicep creates have their own names: none is a name the provision orchestration resolves."""
    names = _template_names()
    assert "inference-app" in names and "inference-app-env" in names
    text = main_text()
    for r in resources(text):
        if r.existing or "name" not in block_entries(r.body):
            continue
        expr = prop(r.body, "name")
        assert not re.search(r"\binference(StorageAccountName|FileShareName|ResourceGroupName|Config|Parameters)\b",
                             expr), r.symbol
        if (lit := _literal(expr)) is not None:
            assert lit not in names, r.symbol
        prefix = re.match(r"'([a-z-]*)", expr)
        if prefix and prefix[1]:
            assert not any(n.startswith(prefix[1]) for n in names), (r.symbol, prefix[1])


def test_bicep_declares_the_expected_resources():
    """main.bicep creates the orchestrator's own resources, each of the expected type."""
    expected = {
        "identity": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "logs": "Microsoft.OperationalInsights/workspaces",
        "appInsights": "Microsoft.Insights/components",
        "storage": "Microsoft.Storage/storageAccounts",
        "deploymentContainer": "Microsoft.Storage/storageAccounts/blobServices/containers",
        "adaptersContainer": "Microsoft.Storage/storageAccounts/blobServices/containers",
        "vault": "Microsoft.KeyVault/vaults",
        "apiKeySecret": "Microsoft.KeyVault/vaults/secrets",
        "registry": "Microsoft.ContainerRegistry/registries",
        "pullIdentity": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "plan": "Microsoft.Web/serverfarms",
        "functionApp": "Microsoft.Web/sites",
        "systemTopic": "Microsoft.EventGrid/systemTopics",
        "scheduler": "Microsoft.DurableTask/schedulers",
        "taskHub": "Microsoft.DurableTask/schedulers/taskHubs",
    }
    res = main_resources()
    for symbol, type_ in expected.items():
        assert symbol in res and res[symbol].type == type_, symbol
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", res[symbol].api_version)
    assert "WorkspaceResourceId: logs.id" in res["appInsights"].body
    assert prop(res["adaptersContainer"].body, "name") == "adaptersContainerName"


def test_app_settings_wait_for_role_assignments():
    """App settings are written after the role assignments they rely on (Key Vault reference, identity storage)."""
    settings = [r for r in resources(main_text()) if r.type == "Microsoft.Web/sites/config"][0]
    depends = prop(settings.body, "dependsOn")
    for symbol in ("storageBlobOwner", "storageQueueContributor", "storageTableContributor", "vaultSecretsUser",
                   "registryPull", "pullIdentityOperator", "inferenceAccess", "taskHubDataContributor"):
        assert symbol in depends, symbol


# --- the Durable backend: Azure Storage (default) or Durable Task Scheduler -----------------------------------------

HOST_OVERRIDE = "AzureFunctionsJobHost__"  # app settings named AzureFunctionsJobHost__<path> override host.json values
# Microsoft.DurableTask api versions published as stable in azure-rest-api-specs (specification/durabletask/.../stable).
DTS_STABLE_API_VERSIONS = {"2025-11-01", "2026-02-01", "2026-06-01", "2026-07-01"}
DTS_NAME = re.compile(r"[a-zA-Z0-9-]{3,64}")  # schedulers and taskHubs name pattern (2025-11-01 spec)


def host_config(settings: dict[str, str]) -> dict:
    """host.json as the Functions host sees it: `AzureFunctionsJobHost__a__b` settings replace host.json's a.b."""
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    for name, value in settings.items():
        if not name.startswith(HOST_OVERRIDE):
            continue
        *path, leaf = name[len(HOST_OVERRIDE):].split("__")
        node = host
        for key in path:
            assert key in node, f"{name}: {key!r} is not a host.json section"  # an override of a real path
            node = node[key]
        node[leaf] = _literal(value) if _literal(value) is not None else value
    return host


def durable_connection(storage_provider: dict) -> str:
    """The connection name the Durable extension reads: connectionName, then connectionStringName (as
    TriggerMetadataExtensions.ResolveConnectionName in azure-functions-durable-extension does)."""
    for key in ("connectionName", "connectionStringName"):
        if isinstance(storage_provider.get(key), str) and storage_provider[key].strip():
            return storage_provider[key]
    raise AssertionError("no connection name")


def test_durable_backend_parameter():
    """durableBackend chooses AzureStorage (default) or DurableTaskScheduler; azd passes DURABLE_BACKEND."""
    text = main_text()
    assert params(text)["durableBackend"] == "'AzureStorage'"
    allowed = re.search(r"@allowed\(\[\n((?:  '\w+'\n)+)\]\)\n@description\([^\n]*\)\nparam durableBackend ", text)
    assert allowed and re.findall(r"'(\w+)'", allowed[1]) == ["AzureStorage", "DurableTaskScheduler"]
    assert "var useDurableTaskScheduler = durableBackend == 'DurableTaskScheduler'" in text
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert data["durableBackend"]["value"] == "${DURABLE_BACKEND=AzureStorage}"
    sku = re.search(r"@allowed\(\[\n((?:  '\w+'\n)+)\]\)\n@description\([^\n]*\)\nparam durableTaskSchedulerSku ", text)
    assert sku and set(re.findall(r"'(\w+)'", sku[1])) == {"Consumption", "Dedicated"}  # SchedulerSkuName


def test_durable_task_scheduler_resources():
    """Scheduler + task hub exist only with the scheduler backend, on a stable api version, with the properties the
    spec requires (ipAllowlist, sku.name), and the task hub is host.json's hub (DURABLE_TASK_HUB)."""
    res = main_resources()
    scheduler, hub = res["scheduler"], res["taskHub"]
    text = main_text()
    for r in (scheduler, hub):
        assert re.search(rf"^resource {r.symbol} '[^']+' = if \(useDurableTaskScheduler\) \{{", text, re.M), r.symbol
        assert r.api_version in DTS_STABLE_API_VERSIONS, r.api_version
    assert scheduler.api_version == hub.api_version
    props = prop(scheduler.body, "properties")
    allow = re.findall(r"'([^']+)'", prop(props, "ipAllowlist"))
    assert allow, "an empty ipAllowlist refuses every caller"
    assert prop(prop(props, "sku"), "name") == "durableTaskSchedulerSku"
    name = prop(scheduler.body, "name")
    assert name == "'dts-adapters-${resourceToken}'"
    assert DTS_NAME.fullmatch("dts-adapters-" + "x" * 13)  # uniqueString is 13 characters
    assert prop(hub.body, "parent") == "scheduler"
    assert prop(hub.body, "name") == "durableTaskHub"
    hub_name = _literal(params(text)["durableTaskHub"] or "")
    assert hub_name and DTS_NAME.fullmatch(hub_name) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,49}", hub_name)
    assert app_settings()["DURABLE_TASK_HUB"] == "durableTaskHub"


def test_durable_task_scheduler_settings_line_up():
    """With the scheduler, host.json + the app settings give storageProvider azureManaged whose connection (read as the
    extension reads it) is a setting holding an identity-based connection string for this app's identity; with
    Azure Storage, the same resolution gives AzureWebJobsStorage, set up with the identity."""
    always, dts = app_settings(), dts_settings()
    assert not set(always) & set(dts)
    assert not [k for k in always if k.startswith(HOST_OVERRIDE) or k.startswith("DURABLE_TASK_SCHEDULER")]

    default = host_config(always)["extensions"]["durableTask"]
    assert default["storageProvider"]["type"] == "AzureStorage"
    assert durable_connection(default["storageProvider"]) == "AzureWebJobsStorage"
    assert {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__clientId"} <= set(always)

    connection_name = var_literal("durableTaskSchedulerConnectionName")
    assert connection_name == "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"  # the extension's default name
    overridden = dict(dts)
    for key, value in dts.items():
        if value == "durableTaskSchedulerConnectionName":
            overridden[key] = f"'{connection_name}'"
    durable = host_config({**always, **overridden})["extensions"]["durableTask"]
    provider = durable["storageProvider"]
    assert provider["type"] == "azureManaged"
    assert provider["connectionName"] == provider["connectionStringName"] == connection_name
    assert durable_connection(provider) == connection_name
    assert durable["hubName"] == "%DURABLE_TASK_HUB%"  # one hub setting for both backends
    # the other Durable options in host.json (concurrency, tracing) stay as they are
    assert durable["maxConcurrentActivityFunctions"] == 8 and durable["maxConcurrentOrchestratorFunctions"] == 8

    value = dts[connection_name]
    assert value == ("'Endpoint=${scheduler.properties.endpoint};Authentication=ManagedIdentity;"
                     "ClientID=${identity.properties.clientId}'")
    assert always["AZURE_CLIENT_ID"] == "identity.properties.clientId"  # the identity the role is granted to
    assert "identity.id" in prop(main_resources()["functionApp"].body, "identity")


def test_durable_task_scheduler_role():
    """The app's identity gets Durable Task Data Contributor on the task hub, only with the scheduler backend."""
    text = main_text()
    roles = _role_vars(text)
    assert roles["durableTaskDataContributor"] == ROLE_TABLE["Durable Task Data Contributor"][0]
    found = [r for r in resources(text) if "roles.durableTaskDataContributor" in r.body]
    assert len(found) == 1
    r = found[0]
    assert re.search(rf"^resource {r.symbol} '[^']+' = if \(useDurableTaskScheduler\) \{{", text, re.M)
    assert prop(r.body, "scope") == "taskHub"
    assert prop(prop(r.body, "properties"), "principalId") == "identity.properties.principalId"
    assert prop(r.body, "name") == "guid(taskHub.id, identity.id, roles.durableTaskDataContributor)"


def test_durable_task_scheduler_settings_have_readers_and_no_secret():
    """Every scheduler setting is read by the host (a host.json override or the connection it names), and the
    connection string authenticates with the managed identity, carrying no key."""
    dts = dts_settings()
    connection_name = var_literal("durableTaskSchedulerConnectionName")
    for name, value in dts.items():
        assert name.startswith(HOST_OVERRIDE) or name == connection_name, name
        assert not re.search(r"listKeys|AccountKey|SharedAccessSignature|primaryKey|sig=|Authentication=None",
                             value, re.I), name
    assert "Authentication=ManagedIdentity" in dts[connection_name]
