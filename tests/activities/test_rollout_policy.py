"""The rollout policy's format: defaults, strict parsing with the field named, where a rollout's policy comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activities.rollout_policy import (
    POLICY_SETTING,
    CanaryPolicy,
    PolicyError,
    RolloutPolicy,
    effective_policy,
    setting_policy,
)

EVAL = {"min_score": 0.5, "cases": [{"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}}]}


def test_parts_left_out_are_off_and_given_parts_get_defaults() -> None:
    assert RolloutPolicy.from_dict({}) == RolloutPolicy()
    assert RolloutPolicy().canary is None and not RolloutPolicy().approval.required
    policy = RolloutPolicy.from_dict({"canary": {"steps": [25, 100], "hold_s": 5}, "approval": {"required": True}})
    assert policy.canary == CanaryPolicy(steps=(25, 100), hold_s=5.0)
    assert policy.approval.required and policy.approval.timeout_s == 86400.0


def test_round_trip_through_json() -> None:
    policy = RolloutPolicy.from_dict({"canary": {"steps": [10, 50, 100], "max_ttft_p95_ms": 800},
                                      "quality": {"max_regression": 0.1, "eval": EVAL},
                                      "approval": {"required": True, "timeout_s": 60}})
    again = RolloutPolicy.from_json(json.dumps(policy.to_dict()))
    assert again == policy and again.to_dict()["canary"]["steps"] == [10, 50, 100]
    assert again.quality.eval is not None and again.quality.eval["min_score"] == 0.5


@pytest.mark.parametrize(("data", "names"), [
    ({"canary": {"step": [10, 100]}}, "unknown field(s) ['step']"),
    ({"canaries": {}}, "unknown field(s) ['canaries']"),
    ({"canary": {"steps": [50, 10, 100]}}, "must increase and end with 100"),
    ({"canary": {"steps": [10, 50]}}, "must increase and end with 100"),
    ({"canary": {"steps": [0, 100]}}, "canary.steps must be a list of whole percentages"),
    ({"canary": {"steps": [10.5, 100]}}, "canary.steps must be a list of whole percentages"),
    ({"canary": {"steps": []}}, "canary.steps"),
    ({"canary": {"hold_s": -1}}, "canary.hold_s must be between"),
    ({"canary": {"hold_s": "60"}}, "canary.hold_s must be a number"),
    ({"canary": {"max_error_rate": 1.5}}, "canary.max_error_rate must be between"),
    ({"canary": {"max_ttft_p95_ratio": 0.5}}, "canary.max_ttft_p95_ratio must be between"),
    ({"canary": {"min_requests": -3}}, "canary.min_requests"),
    ({"canary": {"min_requests": True}}, "canary.min_requests"),
    ({"quality": {"max_regression": 2}}, "quality.max_regression must be between"),
    ({"quality": {"eval": {"cases": []}}}, "quality.eval"),
    ({"approval": {"required": "yes"}}, "approval.required must be true or false"),
    ({"approval": {"timeout_s": 0}}, "approval.timeout_s must be between"),
    ([], "policy must be a JSON object"),
    ({"canary": []}, "canary must be a JSON object"),
])
def test_a_bad_policy_names_the_field(data: object, names: str) -> None:
    with pytest.raises(PolicyError) as err:
        RolloutPolicy.from_dict(data)
    assert names in str(err.value)


def test_json_errors_and_size_are_refused() -> None:
    with pytest.raises(PolicyError, match="not valid JSON"):
        RolloutPolicy.from_json("{nope")
    with pytest.raises(PolicyError, match="more than"):
        RolloutPolicy.from_json(" " * (600 * 1024))


def test_the_app_policy_wins_over_the_setting_and_an_empty_setting_is_none() -> None:
    env = {POLICY_SETTING: json.dumps({"approval": {"required": True}})}
    own = RolloutPolicy.from_dict({"canary": {}})
    assert effective_policy(own, env) == (own, "app")
    default, source = effective_policy(None, env)
    assert source == "setting" and default is not None and default.approval.required
    assert effective_policy(None, {POLICY_SETTING: "  "}) == (None, "none")
    assert setting_policy({}) is None


def test_a_bad_setting_is_an_error_naming_the_setting() -> None:
    with pytest.raises(PolicyError, match=f"{POLICY_SETTING}: canary.steps"):
        setting_policy({POLICY_SETTING: json.dumps({"canary": {"steps": [5]}})})


def test_the_documented_example_policy_parses_with_every_part() -> None:
    """docs/policy.example.json (the README's `policy set` line) is a valid policy with all three parts."""
    root = Path(__file__).resolve().parents[2]
    policy = RolloutPolicy.from_json((root / "docs" / "policy.example.json").read_bytes())
    assert policy.canary is not None and policy.canary.steps == (10, 50, 100)
    assert policy.quality.eval is not None and not policy.approval.required
