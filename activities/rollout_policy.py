"""An app's rollout policy: canary steps and their analysis, the quality gate's margin and set, approval.

Where it comes from (`effective_policy`): the app's own policy (the blob `<app>/_policy.json` in the upload
container, written by `PUT /api/apps/{app}/policy`), else the `ROLLOUT_POLICY` app setting (JSON, every app's
default), else none. Without a policy, and without an evaluation set in the adapter, a rollout hot-swaps the new
version to all traffic after the smoke chat (the behaviour before policies existed). Format and defaults:
docs/rollouts.md "Rollout policies". Parsing is strict: an unknown key or a value out of range is a `PolicyError`
naming the field, so a typo never silently turns a gate off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from activities.eval_set import EvalSet, EvalSetError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

POLICY_SETTING = "ROLLOUT_POLICY"
POLICY_BLOB = "_policy.json"
MAX_POLICY_BYTES = 512 * 1024
MAX_HOLD_S = 24 * 3600.0
MAX_APPROVAL_S = 7 * 24 * 3600.0


class PolicyError(ValueError):
    """The policy does not follow the format; the message names the field."""


def _object(data: Any, where: str, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where} must be a JSON object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"{where} has unknown field(s) {unknown}; known: {sorted(known)}")
    return data


def _number(data: Mapping[str, Any], key: str, where: str, default: float | None, low: float, high: float
            ) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{where}.{key} must be a number, got {value!r}")
    if not low <= value <= high:
        raise PolicyError(f"{where}.{key} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CanaryPolicy:
    """Traffic steps in percent of callers (the last is 100: promotion), the hold at each step, and the analysis
    that must pass at the end of each hold (candidate against the live version, from the replicas' metrics)."""

    steps: tuple[int, ...] = (10, 50, 100)
    hold_s: float = 60.0
    max_error_rate: float = 0.05  # the candidate's share of requests ending in a 5xx
    max_error_rate_increase: float = 0.02  # candidate's error rate minus the live version's
    max_ttft_p95_ratio: float | None = 1.5  # candidate's time-to-first-token p95 / the live version's
    max_ttft_p95_ms: float | None = None  # an absolute bound on the candidate's p95
    #: Fewer candidate requests in a hold: the step fails ("not enough traffic to judge"); 0 lets a hold without
    #: candidate traffic pass unjudged (an idle app's canary).
    min_requests: int = 1

    KEYS = {"steps", "hold_s", "max_error_rate", "max_error_rate_increase", "max_ttft_p95_ratio", "max_ttft_p95_ms",
            "min_requests"}

    @classmethod
    def from_dict(cls, data: Any) -> CanaryPolicy:
        where = "canary"
        data = _object(data, where, cls.KEYS)
        steps = data.get("steps", list(cls.steps))
        if (not isinstance(steps, list) or not steps
                or any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps)):
            raise PolicyError(f"{where}.steps must be a list of whole percentages in 1..100, got {steps!r}")
        if steps != sorted(set(steps)) or steps[-1] != 100:
            raise PolicyError(f"{where}.steps must increase and end with 100 (promotion), got {steps!r}")
        min_requests = data.get("min_requests", cls.min_requests)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
            raise PolicyError(f"{where}.min_requests must be a whole number >= 0, got {min_requests!r}")
        return cls(
            steps=tuple(steps),
            hold_s=_number(data, "hold_s", where, cls.hold_s, 0.0, MAX_HOLD_S),
            max_error_rate=_number(data, "max_error_rate", where, cls.max_error_rate, 0.0, 1.0),
            max_error_rate_increase=_number(data, "max_error_rate_increase", where, cls.max_error_rate_increase,
                                            0.0, 1.0),
            max_ttft_p95_ratio=_number(data, "max_ttft_p95_ratio", where, cls.max_ttft_p95_ratio, 1.0, 1000.0),
            max_ttft_p95_ms=_number(data, "max_ttft_p95_ms", where, None, 1.0, 3_600_000.0),
            min_requests=min_requests,
        )


@dataclass(frozen=True)
class QualityPolicy:
    """The quality gate: the candidate may score at most `max_regression` below the live version on each
    evaluation set (the adapter's own `eval.json` and the app's `eval`), and never below a set's `min_score`."""

    max_regression: float = 0.0
    eval: dict[str, Any] | None = None  # the app's own evaluation set (activities/eval_set.py format)

    KEYS = {"max_regression", "eval"}

    @classmethod
    def from_dict(cls, data: Any) -> QualityPolicy:
        data = _object(data, "quality", cls.KEYS)
        eval_set = data.get("eval")
        if eval_set is not None:
            try:
                eval_set = EvalSet.from_dict(eval_set).to_dict()
            except EvalSetError as exc:
                raise PolicyError(f"quality.eval: {exc}") from exc
        return cls(_number(data, "max_regression", "quality", 0.0, 0.0, 1.0), eval_set)


@dataclass(frozen=True)
class ApprovalPolicy:
    """A person approves (`adapterctl approve ID`) before any traffic moves, within `timeout_s`."""

    required: bool = False
    timeout_s: float = 86400.0

    KEYS = {"required", "timeout_s"}

    @classmethod
    def from_dict(cls, data: Any) -> ApprovalPolicy:
        data = _object(data, "approval", cls.KEYS)
        required = data.get("required", False)
        if not isinstance(required, bool):
            raise PolicyError(f"approval.required must be true or false, got {required!r}")
        return cls(required, _number(data, "timeout_s", "approval", cls.timeout_s, 1.0, MAX_APPROVAL_S))


@dataclass(frozen=True)
class RolloutPolicy:
    """One app's policy; a part left out is off (no canary: straight to all traffic; no approval)."""

    canary: CanaryPolicy | None = None
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)

    KEYS = {"canary", "quality", "approval"}

    @classmethod
    def from_dict(cls, data: Any) -> RolloutPolicy:
        data = _object(data, "policy", cls.KEYS)
        canary = data.get("canary")
        return cls(
            canary=CanaryPolicy.from_dict(canary) if canary is not None else None,
            quality=QualityPolicy.from_dict(data.get("quality") or {}),
            approval=ApprovalPolicy.from_dict(data.get("approval") or {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "policy") -> RolloutPolicy:
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError(f"{where} is {len(text)} bytes, more than {MAX_POLICY_BYTES}")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{where} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.canary is not None:
            data["canary"]["steps"] = list(self.canary.steps)
        return data


def setting_policy(env: Mapping[str, str]) -> RolloutPolicy | None:
    """Every app's default policy from the `ROLLOUT_POLICY` setting (unset or empty: none)."""
    raw = (env.get(POLICY_SETTING) or "").strip()
    return RolloutPolicy.from_json(raw, POLICY_SETTING) if raw else None


def effective_policy(app_policy: RolloutPolicy | None, env: Mapping[str, str]) -> tuple[RolloutPolicy | None, str]:
    """The policy a rollout of the app follows, and where it came from: `app`, `setting` or `none`."""
    if app_policy is not None:
        return app_policy, "app"
    default = setting_policy(env)
    return (default, "setting") if default is not None else (None, "none")


def _policy_blob(app: str) -> str:
    return f"{app}/{POLICY_BLOB}"


def read_app_policy(container: ContainerClient, app: str) -> RolloutPolicy | None:
    """The app's own policy blob, None when it has none. A blob that no longer parses (written by another version)
    raises `PolicyError`: the rollout fails naming it rather than running without gates."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        raw = container.download_blob(_policy_blob(app)).readall()
    except ResourceNotFoundError:
        return None
    return RolloutPolicy.from_json(raw, f"the policy of app {app!r}")


def write_app_policy(container: ContainerClient, app: str, policy: RolloutPolicy | None) -> None:
    """Store the app's policy (None: remove it, the `ROLLOUT_POLICY` default applies again)."""
    from azure.core.exceptions import ResourceNotFoundError

    if policy is None:
        try:
            container.delete_blob(_policy_blob(app))
        except ResourceNotFoundError:
            pass
        return
    container.upload_blob(_policy_blob(app), json.dumps(policy.to_dict(), indent=2).encode(), overwrite=True)
