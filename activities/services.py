"""The outside systems an activity talks to, built once per process from the app settings.

`services()` is the single place that turns settings into clients: the upload store (blobs), the staging
target (Azure Files share in Azure, a local folder in devhost), the container platform (ACA or a local process)
and the deployment records. Built on first use, never at import (importing the app stays fast).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from activities.adapter_store import AdapterStore, BlobStoreSettings, LocalFolderTarget, StagingTarget
from activities.apps import AcaApps, Apps, LocalApps, local_spec
from activities.config import Settings
from activities.records import DeploymentRecords
from activities.validation import ValidationRules

API_KEYS_SECRET = "inference-api-keys"  # the platform secret the server reads as INFERENCE_API_KEYS


@dataclass
class Services:
    settings: Settings
    store: AdapterStore
    target: StagingTarget
    apps: Apps
    records: DeploymentRecords
    alias: str = "live"

    def rules(self) -> ValidationRules:
        s = self.settings
        return ValidationRules(
            base_model=s.base_model_name,
            max_rank=s.max_lora_rank,
            allowed_target_modules=s.allowed_target_modules,
            max_total_bytes=s.max_adapter_mb << 20,
        )

    def read_manifest(self, app: str) -> dict[str, Any] | None:
        manifest = self.target.read_manifest(app)
        return asdict(manifest) if manifest else None



def build_services(env: Mapping[str, str]) -> Services:
    """Wire clients from app settings (`env`: the process environment in the Functions host)."""
    settings = Settings.from_env(env)
    store = AdapterStore(BlobStoreSettings.from_env(env))
    server_env = {"INFERENCE_SYNC_INTERVAL_S": env.get("INFERENCE_SYNC_INTERVAL_S", "0.5")}
    target: StagingTarget
    apps: Apps
    if settings.platform == "local":
        from activities.platform.local import LocalPlatform, LocalPlatformSettings

        state_root = Path(env.get("DEVHOST_STATE_DIR", ".devhost")).resolve()
        store_root = Path(env.get("ADAPTER_STORE_PATH", state_root / "store")).resolve()
        target = LocalFolderTarget(store_root)
        platform = LocalPlatform(LocalPlatformSettings(
            state_dir=state_root / "platform",
            store_root=store_root,
            model_path=Path(settings.model_path),
            port=int(env.get("LOCAL_INFERENCE_PORT", "0")),
            server_command=(sys.executable, "-m", "inference_server"),
            runtime=settings.local_runtime,
            image=settings.local_inference_image,
        ))
        apps = LocalApps(platform, lambda app: local_spec(settings, app, server_env, API_KEYS_SECRET))
    else:
        from activities.adapter_store import AzureFileShareTarget, ShareSettings

        target = AzureFileShareTarget(ShareSettings.from_env(env))
        apps = AcaApps(settings)
    return Services(settings, store, target, apps, DeploymentRecords(store))


@functools.cache
def services() -> Services:
    """The process's services, built from the environment on first use."""
    return build_services(os.environ)
