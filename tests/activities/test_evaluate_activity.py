"""The `evaluate_adapter` activity against the aiohttp stand-in: asked by version name, scored per version, a 5xx
fails one case only, an endpoint that answers nothing raises for the activity retry."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from activities import functions
from activities.platform.base import AppState
from tests.activities.standin_server import Behavior, serve_in_thread

CANDIDATE, LIVE = "alpha@abcdef012345", "alpha@0123456789ab"
EVAL = {"min_score": 0.5, "max_tokens": 8, "cases": [
    {"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "hello"}},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "who?"}],
     "expect": {"pattern": r"^alpha\b"}},
]}


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> None:
    """The activity's services: an app whose platform state has `endpoint`, and the inference key "k1"."""
    apps = SimpleNamespace(describe=lambda app: AppState(app, True, endpoint=endpoint, replicas=1))
    svc = SimpleNamespace(apps=apps, settings=SimpleNamespace(inference_api_key="k1"), alias="live")
    monkeypatch.setattr(functions, "services", lambda: svc)


@pytest.fixture
def behavior() -> Behavior:
    return Behavior(api_key="k1", replies_by_model={CANDIDATE: "alpha says hello", LIVE: "beta says goodbye"})


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, behavior: Behavior) -> Iterator[Behavior]:
    with serve_in_thread(behavior) as url:
        use_endpoint(monkeypatch, url)
        yield behavior


def evaluate(versions: list[str], eval_set: dict[str, Any] = EVAL) -> dict[str, Any]:
    return functions.evaluate_adapter({"app": "demo", "versions": versions, "eval_set": eval_set})


def test_each_version_asked_by_name_and_scored(served: Behavior) -> None:
    out = evaluate([CANDIDATE, LIVE])
    assert out["ok"] is True and list(out["scores"]) == [CANDIDATE, LIVE]
    cand, live = out["scores"][CANDIDATE], out["scores"][LIVE]
    assert (cand["passed"], cand["total"], cand["score"]) == (2, 2, 1.0)
    assert (live["passed"], live["score"]) == (0, 0.0)
    assert live["cases"][0] == {"ok": False, "why": "reply does not contain 'hello'", "reply": "beta says goodbye"}
    assert [c["model"] for c in served.chats] == [CANDIDATE, CANDIDATE, LIVE, LIVE]
    first = served.chats[0]
    assert first == {"model": CANDIDATE, "messages": EVAL["cases"][0]["messages"], "max_tokens": 8,
                     "temperature": 0, "stream": False}
    assert served.chats[1]["messages"] == EVAL["cases"][1]["messages"]


def test_a_server_error_fails_that_case_only(served: Behavior) -> None:
    served.failing_chats.add((CANDIDATE, "who?"))
    out = evaluate([CANDIDATE, LIVE])
    cand = out["scores"][CANDIDATE]
    assert (cand["passed"], cand["score"]) == (1, 0.5)
    assert cand["cases"][1] == {"ok": False, "why": "chat answered 500: engine exploded", "reply": None}
    assert len(served.chats) == 4


def test_every_request_failing_with_5xx_raises(served: Behavior) -> None:
    """No answer below 500 to any request: the server is failing, not the adapter bad; the activity retries."""
    served.chat_status = 503
    with pytest.raises(functions.EndpointUnavailable, match="answered 503"):
        evaluate([CANDIDATE, LIVE])


def test_gives_up_early_when_nothing_answers(served: Behavior) -> None:
    """The first EVAL_UNREACHABLE_AFTER requests all unanswered: raise without asking the rest."""
    served.chat_status = 502
    many = {**EVAL, "cases": EVAL["cases"] * 10}
    with pytest.raises(functions.EndpointUnavailable):
        evaluate([CANDIDATE, LIVE], many)
    assert len(served.chats) == functions.EVAL_UNREACHABLE_AFTER


def test_a_4xx_is_an_answer(served: Behavior) -> None:
    """A 4xx (e.g. the version name unknown) reached the server: the cases fail, the activity does not raise."""
    served.chat_status = 404
    out = evaluate([CANDIDATE])
    assert out["scores"][CANDIDATE]["score"] == 0.0
    assert out["scores"][CANDIDATE]["cases"][0]["why"].startswith("chat answered 404")


def test_closed_port_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    use_endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(functions.EndpointUnavailable, match="ConnectionError"):
        evaluate([CANDIDATE, LIVE])


def test_no_endpoint_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    use_endpoint(monkeypatch, None)
    with pytest.raises(functions.EndpointUnavailable, match="no endpoint"):
        evaluate([CANDIDATE])


def test_invalid_set_is_a_content_failure(served: Behavior) -> None:
    out = evaluate([CANDIDATE], {"cases": []})
    assert out == {"ok": False, "code": "eval_set_invalid", "reason": "eval_set_invalid: cases: must be a non-empty list",
                   "cause": "content"}
    assert served.chats == []


def test_a_refused_key_raises(served: Behavior) -> None:
    """401 says nothing about the adapter (our key is wrong): not an answer, so nothing is scored."""
    served.api_key = "other"
    with pytest.raises(functions.EndpointUnavailable, match="answered 401: bad key"):
        evaluate([CANDIDATE])


def test_past_the_deadline_raises(served: Behavior, monkeypatch: pytest.MonkeyPatch) -> None:
    served.chat_delay = 0.2
    monkeypatch.setattr(functions, "EVAL_DEADLINE_S", 0.1)
    with pytest.raises(TimeoutError, match="ran past"):
        evaluate([CANDIDATE, LIVE])
    assert len(served.chats) == 1


def test_no_versions_asks_nothing(served: Behavior) -> None:
    assert evaluate([]) == {"ok": True, "scores": {}}
    assert served.chats == []
