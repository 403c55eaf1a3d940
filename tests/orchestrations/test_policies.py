"""Retry and timing policies validate themselves and read app settings."""

import pytest

from orchestrations.policies import RetryPolicy, RolloutTiming


def test_retry_policy_rejects_bad_fields_by_name() -> None:
    """A zero interval or zero attempts is refused with the field named."""
    with pytest.raises(ValueError, match="first_interval_ms"):
        RetryPolicy(first_interval_ms=0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_retry_policy_builds_sdk_options() -> None:
    """The SDK's RetryOptions carry our numbers."""
    options = RetryPolicy(250, 3).options()
    assert options.to_json() == {"firstRetryIntervalInMilliseconds": 250, "maxNumberOfAttempts": 3}


def test_timing_from_env_and_round_trip() -> None:
    """Settings override defaults and survive the orchestration input round trip."""
    timing = RolloutTiming.from_env({"ROLLOUT_POLL_INTERVAL_S": "0.25", "ROLLOUT_VERIFY_ATTEMPTS": "5"})
    assert timing.poll_interval_s == 0.25 and timing.verify_attempts == 5
    assert RolloutTiming.from_dict(timing.to_dict()) == timing


def test_timing_rejects_non_numbers_and_non_positive() -> None:
    """A non-numeric or non-positive setting is a clear error."""
    with pytest.raises(ValueError, match="ROLLOUT_HOT_SWAP_TIMEOUT_S"):
        RolloutTiming.from_env({"ROLLOUT_HOT_SWAP_TIMEOUT_S": "soon"})
    with pytest.raises(ValueError, match="poll_interval_s"):
        RolloutTiming(poll_interval_s=0)
