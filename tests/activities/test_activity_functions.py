"""Activity wrappers: permanent failures become `ok: false` values; transient ones raise after Retry-After."""

from __future__ import annotations

import time

import pytest

from activities.adapter_store import DigestMismatchError
from activities.functions import MAX_RETRY_AFTER_S, permanent_failures
from activities.platform.base import PlatformError, TransientPlatformError
from activities.validation import AdapterValidationError


def raising(exc: Exception):
    @permanent_failures
    def activity(payload: dict) -> dict:
        raise exc
    return activity


def test_validation_error_is_a_value_with_its_code() -> None:
    """A bad adapter is not retried: the result names the code and reason."""
    out = raising(AdapterValidationError("rank_too_large", "r=64 > 16"))({})
    assert out == {"ok": False, "code": "rank_too_large", "reason": "rank_too_large: r=64 > 16"}


@pytest.mark.parametrize("exc", [PlatformError("ARM said no: InvalidTemplate"), DigestMismatchError("sha differs")])
def test_permanent_platform_and_store_errors_are_values(exc: Exception) -> None:
    """ARM refusals and store integrity errors end the rollout with the message, without retries."""
    out = raising(exc)({})
    assert out["ok"] is False and out["reason"] == str(exc)


def test_transient_error_raises_after_retry_after() -> None:
    """A throttled call sleeps for Retry-After, then raises so call_activity_with_retry tries again."""
    started = time.perf_counter()
    with pytest.raises(TransientPlatformError):
        raising(TransientPlatformError("429 Too Many Requests", retry_after=0.3))({})
    assert time.perf_counter() - started >= 0.3
    assert MAX_RETRY_AFTER_S <= 60


def test_success_passes_through() -> None:
    """A normal result is returned as it is."""
    assert permanent_failures(lambda payload: {"ok": True, "n": payload["n"]})({"n": 3}) == {"ok": True, "n": 3}
