"""The container platform interface: where the inference server runs (ACA in Azure, a process locally).

Every method is idempotent and safe to retry (activities run at least once). Implementations raise
`PlatformError` with the platform's own message; `TransientPlatformError` marks faults worth a retry
(throttling, 5xx, timeouts), everything else fails the rollout at once.

Secrets: `AppSpec.secrets` are given by the caller (the chat API keys, `API_KEYS_SECRET`); the names in
`AppSpec.generated_secrets` get values the platform generates once per app and keeps where it keeps secrets (the
admin key, `ADMIN_KEY_SECRET`: the local platform's state file, the container app's secret on ACA). A generated value
never equals a given secret's value (each comma-separated key counts), so the admin key is never a chat key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from secrets import token_urlsafe
from typing import Protocol

API_KEYS_SECRET = "inference-api-keys"  # the chat API keys; the server reads them as INFERENCE_API_KEYS
ADMIN_KEY_SECRET = "inference-admin-key"  # the admin routes' key (generated); the server reads INFERENCE_ADMIN_KEY


class PlatformError(RuntimeError):
    """The platform refused or failed an operation; the message says why (ARM's message on ACA)."""


class TransientPlatformError(PlatformError):
    """A fault that a retry may clear (HTTP 429 / 5xx, timeouts). `retry_after` in seconds when the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AppSpec:
    """What an inference app should look like. Fields map to the template's inference.parameters.json."""

    app: str
    image: str
    command: list[str] = field(default_factory=list)
    base_model: str = ""
    min_replicas: int = 0
    max_replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # name -> value; never logged
    generated_secrets: tuple[str, ...] = ()  # names whose values the platform generates and keeps

    def __post_init__(self) -> None:
        both = set(self.secrets) & set(self.generated_secrets)
        if both:
            raise ValueError(f"AppSpec: secrets {sorted(both)} are both given and generated")


def generate_secrets(spec: AppSpec, kept: Mapping[str, str]) -> dict[str, str]:
    """Values for `spec.generated_secrets`: the kept value, else a new random one; never a given secret's value."""
    given = {key.strip() for value in spec.secrets.values() for key in value.split(",")}
    values = {}
    for name in spec.generated_secrets:
        value = kept.get(name, "")
        while not value or value in given:
            value = token_urlsafe(32)
        values[name] = value
    return values


@dataclass(frozen=True)
class AppState:
    """What the platform reports about an app."""

    app: str
    exists: bool
    endpoint: str | None = None
    revision: str | None = None
    replicas: int = 0
    running: bool = False
    image: str | None = None
    command: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EnsureResult:
    state: AppState
    changed: bool  # False when nothing had to be written


class Platform(Protocol):
    """Runs inference apps. `ensure_app` creates or updates (no write when nothing changed)."""

    def ensure_app(self, spec: AppSpec) -> EnsureResult: ...

    def describe_app(self, app: str) -> AppState: ...

    def restart_app(self, app: str) -> AppState:
        """New revision / replica restart; returns once the platform accepted it."""
        ...

    def heal_app(self, app: str) -> dict[str, str]:
        """Restart an app that should run but does not: `{"action": "restarted", "reason": ...}`, else
        `{"action": "none"}` (also for an app that does not exist)."""
        ...

    def delete_app(self, app: str) -> bool:
        """Remove the app (its server stops; shared resources stay); False when it did not exist. Idempotent."""
        ...

    def list_replicas(self, app: str) -> list[str]:
        """Names of the running replicas of the app's latest revision (each server's `CONTAINER_APP_REPLICA_NAME`,
        so its report id), sorted; [] when the app does not exist or nothing runs."""
        ...
