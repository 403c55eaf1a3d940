"""The container platform interface: where the inference server runs (ACA in Azure, a process locally).

Every method is idempotent and safe to retry (activities run at least once). Implementations raise
`PlatformError` with the platform's own message; `TransientPlatformError` marks faults worth a retry
(throttling, 5xx, timeouts), everything else fails the rollout at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
