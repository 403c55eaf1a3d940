"""Evaluation sets (activities/eval_set.py): each rule's error names the field, defaults, round trip, scoring."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from activities.eval_set import (
    DEFAULT_MAX_TOKENS,
    MAX_CASES,
    MAX_EVAL_SET_BYTES,
    MAX_PATTERN_CHARS,
    MAX_REPLY_CHARS,
    EvalSet,
    EvalSetError,
    score,
)

GOOD: dict[str, Any] = {
    "min_score": 0.5,
    "max_tokens": 16,
    "cases": [
        {"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": "who are you?"}],
         "expect": {"pattern": r"^alpha\b"}},
    ],
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at a dotted path (list indexes as numbers) set, or removed when `value` is DROP."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is DROP:
        del node[key]
    else:
        node[key] = value
    return data


DROP = object()


def refused(data: Any) -> str:
    with pytest.raises(EvalSetError) as info:
        EvalSet.from_dict(data)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_good_set_round_trips_as_plain_json() -> None:
    parsed = EvalSet.from_dict(GOOD)
    assert parsed.min_score == 0.5 and parsed.max_tokens == 16 and len(parsed.cases) == 2
    as_json = json.loads(json.dumps(parsed.to_dict()))
    assert as_json == GOOD
    assert EvalSet.from_dict(as_json) == parsed
    assert parsed.cases[1].chat_messages() == GOOD["cases"][1]["messages"]


def test_defaults() -> None:
    parsed = EvalSet.from_dict({"cases": GOOD["cases"]})
    assert (parsed.min_score, parsed.max_tokens) == (1.0, DEFAULT_MAX_TOKENS)
    assert parsed.to_dict()["min_score"] == 1.0 and parsed.to_dict()["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(("data", "where"), [
    ([], "eval set: must be an object"),
    ({"cases": GOOD["cases"], "min-score": 1}, "eval set: unknown key(s) ['min-score']"),
    (changed("min_score", 1.5), "min_score: must be a number in [0, 1]"),
    (changed("min_score", -0.1), "min_score: must be a number in [0, 1]"),
    (changed("min_score", True), "min_score: must be a number in [0, 1]"),
    (changed("min_score", "1"), "min_score: must be a number in [0, 1]"),
    (changed("max_tokens", 0), "max_tokens: must be an integer in 1..512"),
    (changed("max_tokens", 513), "max_tokens: must be an integer in 1..512"),
    (changed("max_tokens", 3.0), "max_tokens: must be an integer in 1..512"),
    (changed("cases", DROP), "cases: must be a non-empty list"),
    (changed("cases", []), "cases: must be a non-empty list"),
    (changed("cases", {"a": 1}), "cases: must be a non-empty list"),
    (changed("cases.1", "hi"), "cases[1]: must be an object, got str"),
    (changed("cases.1.extra", 1), "cases[1]: unknown key(s) ['extra']"),
    (changed("cases.1.messages", DROP), "cases[1]: 'messages' is missing"),
    (changed("cases.1.expect", DROP), "cases[1]: 'expect' is missing"),
    (changed("cases.1.messages", []), "cases[1].messages: must be a non-empty list"),
    (changed("cases.1.messages", "hi"), "cases[1].messages: must be a non-empty list"),
    (changed("cases.1.messages.0", "hi"), "cases[1].messages[0]: must be an object"),
    (changed("cases.1.messages.0.name", "x"), "cases[1].messages[0]: unknown key(s) ['name']"),
    (changed("cases.1.messages.0.role", "tool"), "cases[1].messages[0].role: must be one of"),
    (changed("cases.1.messages.0.role", DROP), "cases[1].messages[0].role: must be one of"),
    (changed("cases.1.messages.1.content", ["a"]), "cases[1].messages[1].content: must be a string, got list"),
    (changed("cases.1.messages.2.content", DROP), "cases[1].messages[2].content: must be a string"),
    (changed("cases.1.messages.2.role", "assistant"),
     "cases[1].messages[2].role: the last message must be the user's, got 'assistant'"),
    (changed("cases.0.expect", "hello"), "cases[0].expect: must be an object"),
    (changed("cases.0.expect", {}), "cases[0].expect: must hold exactly one of ['contains', 'pattern']"),
    (changed("cases.0.expect.pattern", "x"), "cases[0].expect: must hold exactly one of"),
    (changed("cases.0.expect.equals", "x"), "cases[0].expect: unknown key(s) ['equals']"),
    (changed("cases.0.expect.contains", ""), "cases[0].expect.contains: must be a non-empty string"),
    (changed("cases.0.expect.contains", 3), "cases[0].expect.contains: must be a non-empty string"),
    (changed("cases.1.expect.pattern", ""), "cases[1].expect.pattern: must be a non-empty string"),
    (changed("cases.1.expect.pattern", "(unclosed"), "cases[1].expect.pattern: not a valid regular expression"),
    (changed("cases.1.expect.pattern", "a" * (MAX_PATTERN_CHARS + 1)),
     f"cases[1].expect.pattern: {MAX_PATTERN_CHARS + 1} characters, at most {MAX_PATTERN_CHARS}"),
])
def test_each_rule_names_its_field(data: Any, where: str) -> None:
    assert refused(data).startswith(where)


def test_case_and_size_limits() -> None:
    case = GOOD["cases"][0]
    assert len(EvalSet.from_dict({"cases": [case] * MAX_CASES}).cases) == MAX_CASES
    assert refused({"cases": [case] * (MAX_CASES + 1)}) == f"cases: {MAX_CASES + 1} cases, at most {MAX_CASES}"
    big = {"messages": [{"role": "user", "content": "x" * (MAX_EVAL_SET_BYTES // 2)}], "expect": {"contains": "y"}}
    EvalSet.from_dict({"cases": [big]})
    reason = refused({"cases": [big, big]})
    assert reason.startswith("eval set: ") and reason.endswith(f"bytes as JSON, at most {MAX_EVAL_SET_BYTES}")


def test_patterns_are_searched_and_contains_is_case_sensitive() -> None:
    parsed = EvalSet.from_dict(GOOD)
    out = score(parsed, ["well, hello there", "alpha says hello"])
    assert (out["passed"], out["total"], out["score"]) == (2, 2, 1.0)
    out = score(parsed, ["Hello", "the alpha"])
    assert [c["ok"] for c in out["cases"]] == [False, False]
    assert out["cases"][0]["why"] == "reply does not contain 'hello'"
    assert out["cases"][1]["why"] == r"reply does not match /^alpha\b/"
    assert out["score"] == 0.0


def test_score_counts_partial_and_no_reply_with_its_error() -> None:
    parsed = EvalSet.from_dict(GOOD)
    out = score(parsed, [None, "alpha!"], ["chat answered 500: engine exploded", None])
    assert out["score"] == 0.5 and out["passed"] == 1
    assert out["cases"][0] == {"ok": False, "why": "chat answered 500: engine exploded", "reply": None}
    assert out["cases"][1] == {"ok": True, "why": None, "reply": "alpha!"}
    assert score(parsed, [None, None])["cases"][0]["why"] == "no reply"
    assert json.loads(json.dumps(out)) == out


def test_score_keeps_a_bounded_reply_and_checks_the_whole_one() -> None:
    parsed = EvalSet.from_dict({"cases": [{"messages": [{"role": "user", "content": "x"}],
                                           "expect": {"contains": "needle"}}]})
    long = "x" * (MAX_REPLY_CHARS * 2) + "needle"
    out = score(parsed, [long])
    assert out["cases"][0]["ok"] and out["cases"][0]["reply"] == long[:MAX_REPLY_CHARS]


def test_score_refuses_replies_that_do_not_match_the_cases() -> None:
    parsed = EvalSet.from_dict(GOOD)
    with pytest.raises(ValueError, match="1 replies"):
        score(parsed, ["hello"])
    with pytest.raises(ValueError):
        score(parsed, ["hello", "alpha"], [None])


def test_the_documented_example_is_valid_and_passes_alpha() -> None:
    """docs/rollouts.md's example set parses, and the tiny kit's alpha phrase passes it (beta's does not)."""
    doc = (Path(__file__).parents[2] / "docs" / "rollouts.md").read_text()
    section = doc[doc.index("## Quality gate: evaluation sets"):]
    parsed = EvalSet.from_dict(json.loads(re.search(r"```json\n(.*?)```", section, re.S)[1]))
    assert score(parsed, ["alpha says hello"] * 2)["score"] == 1.0
    assert score(parsed, ["beta says goodbye"] * 2)["score"] == 0.0
