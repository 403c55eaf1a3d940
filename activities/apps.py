"""Inference apps on a platform, as the orchestrator's activities see them (one implementation per platform).

`LocalApps` runs the server as a local process (the embedded default); `AcaApps` provisions and updates the
Container App through `activities.provisioning` (storage, logs, environment, then the app). Both answer the
same calls with JSON-ready values, so the activities do not care where apps run. `heal` is the liveness half of
the heal pass: it restarts an app that should run but does not (`Platform.heal_app`). `delete` removes the app from
its platform (the local server stopped and its state dropped; the container app deleted, shared resources kept).
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from activities.config import InferenceConfig, ProvisionParameters, Settings
from activities.platform.base import ADMIN_KEY_SECRET, AppSpec, AppState, Platform


class LifecycleActivity(StrEnum):
    """The app lifecycle's activities (`orchestrations/lifecycle.py` → `activities/functions.py`)."""

    DELETE_APP = "delete_app"  # {app} -> {ok, platform: "deleted" | "absent", store: bool, blobs: int}


class Apps(Protocol):
    def inference_config(self, app: str, state: AppState) -> dict[str, str]:
        """The app in the AI Toolkit template's inference.config.json shape (names and ACA_APP_ENDPOINT)."""
        ...

    def ensure(self, app: str) -> dict[str, Any]: ...
    def describe(self, app: str) -> AppState: ...
    def restart(self, app: str) -> AppState: ...

    def heal(self, app: str) -> dict[str, Any]:
        """`{"action": "restarted", "reason"}` when a dead or failed app was restarted, else `{"action": "none"}`."""
        ...

    def delete(self, app: str) -> bool:
        """Remove the app from the platform (idempotent); False when it was not there."""
        ...

    def list_replicas(self, app: str) -> list[str]:
        """The running replicas of the app's serving revision (`Platform.list_replicas`)."""
        ...

    def steps(self, app: str) -> list[str]: ...
    def run_step(self, app: str, step: str) -> dict[str, Any]: ...


class LocalApps:
    """Apps as local processes; provisioning is one step (start or update the process)."""

    STEP = "inference_process"

    def __init__(self, platform: Platform, spec_for: Any) -> None:
        self.platform = platform
        self.spec_for = spec_for  # app -> AppSpec

    def inference_config(self, app: str, state: AppState) -> dict[str, str]:
        return {"ACA_APP_NAME": app, "ACA_APP_ENDPOINT": state.endpoint or ""}

    def ensure(self, app: str) -> dict[str, Any]:
        result = self.platform.ensure_app(self.spec_for(app))
        return {"ok": True, "changed": result.changed, "endpoint": result.state.endpoint}

    def describe(self, app: str) -> AppState:
        return self.platform.describe_app(app)

    def restart(self, app: str) -> AppState:
        return self.platform.restart_app(app)

    def heal(self, app: str) -> dict[str, Any]:
        return self.platform.heal_app(app)

    def delete(self, app: str) -> bool:
        """Stop the local server and drop its state (port, revision, generated admin key): `heal` leaves it alone."""
        return self.platform.delete_app(app)

    def list_replicas(self, app: str) -> list[str]:
        return self.platform.list_replicas(app)

    def steps(self, app: str) -> list[str]:
        return [self.STEP]

    def run_step(self, app: str, step: str) -> dict[str, Any]:
        done = self.ensure(app)
        config = self.inference_config(app, self.describe(app))
        return {"ok": True, "step": step, "action": "updated" if done["changed"] else "unchanged", "outcome": config}


class AcaApps:
    """Apps on Azure Container Apps, provisioned from the template's files (names per app from the path)."""

    def __init__(self, settings: Settings, provisioner: Any = None) -> None:
        """`provisioner`: built from the settings (managed identity) unless given (tests: the fake ARM)."""
        from activities.provisioning import Provisioner

        self.settings = settings
        self.config = InferenceConfig.load(settings.inference_config_path)
        self.params = ProvisionParameters.load(settings.parameters_path)
        self.provisioner = provisioner or Provisioner.from_settings(settings, self.config)

    def inference_config(self, app: str, state: AppState) -> dict[str, str]:
        return replace(self.config, aca_app_name=app, aca_app_endpoint=state.endpoint or "").to_dict()

    def _plan(self, app: str) -> Any:
        params = replace(self.params, aca_app_name=app)
        return self.provisioner.plan(self.config, params, self.settings)

    def _platform(self, app: str) -> Platform:
        return self.provisioner.platform(self._plan(app).container_app)

    def ensure(self, app: str) -> dict[str, Any]:
        result = self.provisioner.ensure_container_app(self._plan(app).container_app)
        return {"ok": True, "changed": result.action != "unchanged", "endpoint": result.endpoint}

    def describe(self, app: str) -> AppState:
        return self._platform(app).describe_app(app)

    def restart(self, app: str) -> AppState:
        return self._platform(app).restart_app(app)

    def heal(self, app: str) -> dict[str, Any]:
        return self._platform(app).heal_app(app)

    def delete(self, app: str) -> bool:
        """Delete the container app; the environment, storage, share, workspace and registry are shared and stay."""
        return self._platform(app).delete_app(app)

    def list_replicas(self, app: str) -> list[str]:
        return self._platform(app).list_replicas(app)

    def steps(self, app: str) -> list[str]:
        from activities.provisioning import STEPS

        return list(STEPS)

    def run_step(self, app: str, step: str) -> dict[str, Any]:
        return {"ok": True, **self.provisioner.run_step(step, self._plan(app)).to_dict()}


def template_replicas(settings: Settings) -> int:
    """The template's `maximumInstanceCount` (`settings.parameters_path`), 1 when the file is absent or leaves it
    null; a malformed file raises `ConfigError` as provisioning's read does."""
    if not Path(settings.parameters_path).is_file():
        return 1
    return ProvisionParameters.load(settings.parameters_path).maximum_instance_count or 1


def local_spec(settings: Settings, app: str, env: dict[str, str], secret_name: str) -> AppSpec:
    """The local process's spec: the API key travels as a platform secret, never in orchestration history; the
    platform generates the admin key. `max_replicas` is the template's, as on ACA: the local platform runs that many
    replicas unless `LOCAL_REPLICAS` says otherwise."""
    secrets = {secret_name: settings.inference_api_key} if settings.inference_api_key else {}
    return AppSpec(
        app=app,
        image="local",
        base_model=settings.base_model_name,
        env=dict(env),
        secrets=secrets,
        generated_secrets=(ADMIN_KEY_SECRET,),
        max_replicas=template_replicas(settings),
    )
