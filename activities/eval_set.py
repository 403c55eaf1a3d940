"""Evaluation sets of the quality gate: the format, its validation, and scoring replies against it.

An adapter folder may carry `eval.json` (`EVAL_SET_NAME`); an app's rollout policy may carry a set too (same
format). Before traffic moves, each case is asked of the candidate and of the live version by version name
(`activities.functions.evaluate_adapter`), and `score` turns the replies into a score:

```json
{"min_score": 0.8, "max_tokens": 32,
 "cases": [{"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}},
           {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "name?"}],
            "expect": {"pattern": "^alpha\\\\b"}}]}
```

Rules (`EvalSet.from_dict`; an `EvalSetError` names the field, e.g. `cases[3].expect.pattern`): at most
`MAX_EVAL_SET_BYTES` as JSON and `MAX_CASES` cases (at least one); `messages` as the chat API takes them (objects
with `role` system/user/assistant and string `content`, the last from the user); `expect` exactly one of
`contains` (a non-empty string, matched case-sensitively as a substring of the reply) or `pattern` (a Python
regular expression of at most `MAX_PATTERN_CHARS` characters, `re.search` over the reply); `min_score` in [0, 1]
(default 1.0: every case must pass); `max_tokens` 1..`MAX_MAX_TOKENS` (default 32). Unknown keys are refused, so a
typo never silently turns a check off. Everything here is pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EVAL_SET_NAME = "eval.json"
MAX_EVAL_SET_BYTES = 256 << 10
MAX_CASES = 100
MAX_PATTERN_CHARS = 300
MAX_MAX_TOKENS = 512
DEFAULT_MIN_SCORE = 1.0
DEFAULT_MAX_TOKENS = 32
ROLES = ("system", "user", "assistant")
#: How much of each reply a score keeps (it travels in Durable payloads and the rollout record).
MAX_REPLY_CHARS = 200

_SET_KEYS = ("min_score", "max_tokens", "cases")
_CASE_KEYS = ("messages", "expect")
_MESSAGE_KEYS = ("role", "content")
_EXPECT_KINDS = ("contains", "pattern")


class EvalSetError(ValueError):
    """The evaluation set breaks a rule; the message starts with the field (`cases[2].messages[0].role: ...`)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _object(value: Any, where: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EvalSetError(f"{where}: must be an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise EvalSetError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return value


@dataclass(frozen=True)
class Expectation:
    """What a reply must hold: `kind` "contains" (a substring) or "pattern" (a regular expression, searched)."""

    kind: str
    value: str

    def check(self, reply: str) -> str | None:
        """Why `reply` fails the expectation, or None when it passes."""
        if self.kind == "contains":
            return None if self.value in reply else f"reply does not contain {self.value!r}"
        return None if re.search(self.value, reply) else f"reply does not match /{self.value}/"

    def to_dict(self) -> dict[str, str]:
        return {self.kind: self.value}

    @classmethod
    def from_dict(cls, data: Any, where: str = "expect") -> Expectation:
        data = _object(data, where, _EXPECT_KINDS)
        if len(data) != 1:
            raise EvalSetError(f"{where}: must hold exactly one of {list(_EXPECT_KINDS)}")
        ((kind, value),) = data.items()
        if not isinstance(value, str) or not value:
            raise EvalSetError(f"{where}.{kind}: must be a non-empty string")
        if kind == "pattern":
            if len(value) > MAX_PATTERN_CHARS:
                raise EvalSetError(f"{where}.pattern: {len(value)} characters, at most {MAX_PATTERN_CHARS}")
            try:
                re.compile(value)
            except re.error as exc:
                raise EvalSetError(f"{where}.pattern: not a valid regular expression: {exc}") from None
        return cls(kind, value)


@dataclass(frozen=True)
class EvalCase:
    """One prompt (chat messages, the last from the user) and what its reply must hold."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    expect: Expectation

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as the chat API takes them."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.chat_messages(), "expect": self.expect.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EvalCase:
        data = _object(data, where, _CASE_KEYS)
        for key in _CASE_KEYS:
            if key not in data:
                raise EvalSetError(f"{where}: {key!r} is missing")
        raw = data["messages"]
        if not isinstance(raw, list) or not raw:
            raise EvalSetError(f"{where}.messages: must be a non-empty list")
        messages = tuple(_message(m, f"{where}.messages[{i}]") for i, m in enumerate(raw))
        if messages[-1][0] != "user":
            raise EvalSetError(f"{where}.messages[{len(messages) - 1}].role: the last message must be the user's, "
                               f"got {messages[-1][0]!r}")
        return cls(messages, Expectation.from_dict(data["expect"], f"{where}.expect"))


def _message(data: Any, where: str) -> tuple[str, str]:
    data = _object(data, where, _MESSAGE_KEYS)
    role, content = data.get("role"), data.get("content")
    if role not in ROLES:
        raise EvalSetError(f"{where}.role: must be one of {list(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise EvalSetError(f"{where}.content: must be a string, got {type(content).__name__}")
    return role, content


@dataclass(frozen=True)
class EvalSet:
    """A validated evaluation set; `to_dict` is plain JSON (it travels in Durable payloads)."""

    cases: tuple[EvalCase, ...]
    min_score: float = DEFAULT_MIN_SCORE
    max_tokens: int = DEFAULT_MAX_TOKENS

    def to_dict(self) -> dict[str, Any]:
        return {"min_score": self.min_score, "max_tokens": self.max_tokens,
                "cases": [c.to_dict() for c in self.cases]}

    @classmethod
    def from_dict(cls, data: Any) -> EvalSet:
        """Validate and normalise (defaults filled in); raise `EvalSetError` naming the field."""
        data = _object(data, "eval set", _SET_KEYS)
        min_score = data.get("min_score", DEFAULT_MIN_SCORE)
        if not _is_number(min_score) or not 0.0 <= min_score <= 1.0:
            raise EvalSetError(f"min_score: must be a number in [0, 1], got {min_score!r}")
        max_tokens = data.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_MAX_TOKENS:
            raise EvalSetError(f"max_tokens: must be an integer in 1..{MAX_MAX_TOKENS}, got {max_tokens!r}")
        raw = data.get("cases")
        if not isinstance(raw, list) or not raw:
            raise EvalSetError("cases: must be a non-empty list")
        if len(raw) > MAX_CASES:
            raise EvalSetError(f"cases: {len(raw)} cases, at most {MAX_CASES}")
        cases = tuple(EvalCase.from_dict(c, f"cases[{i}]") for i, c in enumerate(raw))
        parsed = cls(cases, float(min_score), max_tokens)
        size = len(json.dumps(parsed.to_dict()).encode())
        if size > MAX_EVAL_SET_BYTES:
            raise EvalSetError(f"eval set: {size} bytes as JSON, at most {MAX_EVAL_SET_BYTES}")
        return parsed


def score(eval_set: EvalSet, replies: Sequence[str | None],
          errors: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Score one version's replies, one per case in order; a None reply fails its case with `errors[i]` (the
    request's error) as the reason.

    Returns `{"score": passed / total, "passed", "total", "cases": [{"ok", "why", "reply"}]}` (`why` None when the
    case passed; `reply` cut to `MAX_REPLY_CHARS`)."""
    if len(replies) != len(eval_set.cases) or (errors is not None and len(errors) != len(replies)):
        raise ValueError(f"{len(replies)} replies (and {len(errors or [])} errors) for "
                         f"{len(eval_set.cases)} cases")
    results = []
    for i, (case, reply) in enumerate(zip(eval_set.cases, replies, strict=True)):
        if reply is None:
            why = (errors[i] if errors else None) or "no reply"
        else:
            why = case.expect.check(reply)
        results.append({"ok": why is None, "why": why, "reply": None if reply is None else reply[:MAX_REPLY_CHARS]})
    passed = sum(r["ok"] for r in results)
    return {"score": passed / len(results), "passed": passed, "total": len(results), "cases": results}
