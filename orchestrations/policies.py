"""Retry and timing policies the orchestrators pass to the Durable runtime.

Activities raise only for faults worth retrying (throttling, 5xx, timeouts, a process not up yet); a permanent
failure (bad adapter, auth, a refused ARM request) comes back as a value with `ok: false` and its reason, so it
fails the rollout at once instead of being retried.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import azure.durable_functions as df


@dataclass(frozen=True)
class RetryPolicy:
    """A validated retry policy: `first_interval_ms` between attempts, at most `max_attempts` attempts."""

    first_interval_ms: int = 1000
    max_attempts: int = 4

    def __post_init__(self) -> None:
        if self.first_interval_ms <= 0:
            raise ValueError(f"first_interval_ms must be > 0, got {self.first_interval_ms}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def options(self) -> df.RetryOptions:
        return df.RetryOptions(self.first_interval_ms, self.max_attempts)


#: I/O against storage, ARM and the endpoint.
IO_RETRY = RetryPolicy(first_interval_ms=1000, max_attempts=4)


@dataclass(frozen=True)
class RolloutTiming:
    """How long activation may take before falling back to a restart, and how the health gate polls.

    Read from app settings by the starters (never inside an orchestrator) and carried in the orchestration
    input, so replays see the same numbers.
    """

    poll_interval_s: float = 1.0
    hot_swap_timeout_s: float = 60.0
    restart_timeout_s: float = 900.0
    verify_attempts: int = 3
    heal_interval_s: float = 300.0
    retry_base_s: float = 15.0  # the reconciler's first retry of a transient failure (×4 per attempt)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RolloutTiming:
        env = os.environ if env is None else env
        keys = {
            "poll_interval_s": "ROLLOUT_POLL_INTERVAL_S",
            "hot_swap_timeout_s": "ROLLOUT_HOT_SWAP_TIMEOUT_S",
            "restart_timeout_s": "ROLLOUT_RESTART_TIMEOUT_S",
            "verify_attempts": "ROLLOUT_VERIFY_ATTEMPTS",
            "heal_interval_s": "RECONCILE_HEAL_INTERVAL_S",
            "retry_base_s": "RECONCILE_RETRY_BASE_S",
        }
        values: dict[str, Any] = {}
        for field_name, key in keys.items():
            if key in env:
                cast = int if field_name == "verify_attempts" else float
                try:
                    values[field_name] = cast(env[key])
                except ValueError as exc:
                    raise ValueError(f"app setting {key} must be a number, got {env[key]!r}") from exc
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RolloutTiming:
        return cls(**(data or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
