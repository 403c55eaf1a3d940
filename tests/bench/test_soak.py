"""The soak's pure parts: the plan follows the seed, answers from a wrong adapter are caught, and the summary's
must-be-0 figures decide the exit code (the soak itself runs on demand: `python bench/soak.py`)."""

from __future__ import annotations

from bench.soak import (
    APPS,
    BAD_KINDS,
    Answer,
    Op,
    Sent,
    classify_answer,
    content_kind,
    in_window,
    outage_windows,
    plan,
    summarize,
    swap_windows,
)

PHRASES = {"alpha": "alpha says hello", "beta": "beta says goodbye"}
SHA_A, SHA_B = "a" * 64, "b" * 64
BASE_OF = {SHA_A[:12]: "alpha", SHA_B[:12]: "beta"}


def _record(record_id: str, adapter: str, sha: str, stage: str, app: str = "soak-a", **extra) -> dict:
    return {"id": record_id, "app": app, "adapter": adapter, "sha256": sha, "stage": stage, **extra}


def _answer(version: str | None, text: str, app: str = "soak-a", error: str | None = None,
            started: float = 100.0) -> Answer:
    return Answer(app, started, started + 0.2, 200 if error is None else 503, version, text, error)


def test_plan_is_deterministic_in_the_seed_and_duplicates_repeat_earlier_uploads() -> None:
    ops = plan(7, 300, 420.0)
    assert ops == plan(7, 300, 420.0)
    assert [o.kind for o in ops] != [o.kind for o in plan(8, 300, 420.0)]
    assert {o.kind for o in ops} == {"good", "dup_upload", "dup_request", "forged", *BAD_KINDS}
    assert {o.app for o in ops} == set(APPS)
    assert [o.at for o in ops] == sorted(o.at for o in ops) and ops[-1].at < 420.0
    for op in ops:
        if op.ref is not None:
            original = ops[op.ref]
            assert op.ref < op.index and original.app == op.app and original.name == op.name
            assert original.kind not in ("forged", "dup_upload", "dup_request")
    uploads = [o.name for o in ops if o.ref is None]
    assert len(uploads) == len(set(uploads)), "every new upload has a name of its own"


def test_content_kind_follows_duplicates_to_their_original() -> None:
    ops = [Op(0, "bad_rank", "soak-a", "bad-rank0000-alpha", "alpha", 0.0),
           Op(1, "dup_request", "soak-a", "bad-rank0000-alpha", "alpha", 1.0, ref=0),
           Op(2, "good", "soak-a", "good0002-beta", "beta", 2.0),
           Op(3, "dup_upload", "soak-a", "good0002-beta", "beta", 3.0, ref=2)]
    assert [content_kind(o, ops) for o in ops] == ["bad", "bad", "good", "good"]


def test_classify_answer() -> None:
    live = {("soak-a", f"alpha@{SHA_A[:12]}"), ("soak-a", f"v2@{SHA_B[:12]}")}

    def why(answer: Answer) -> str | None:
        return classify_answer(answer, live, BASE_OF, PHRASES)

    assert why(_answer(f"alpha@{SHA_A[:12]}", "alpha says hello")) is None
    assert why(_answer(f"v2@{SHA_B[:12]}", "beta says goodbye")) is None
    assert why(_answer(None, "", error="HTTP 503")) is None  # an error is no answer: counted apart
    # the header names alpha's content, the weights that answered are beta's
    assert "lacks 'alpha says hello'" in why(_answer(f"alpha@{SHA_A[:12]}", "beta says goodbye"))
    assert "without an X-Adapter-Version" in why(_answer(None, "alpha says hello"))
    assert "never reached live" in why(_answer(f"v3@{SHA_B[:12]}", "beta says goodbye"))
    assert "never reached live" in why(_answer(f"alpha@{SHA_A[:12]}", "alpha says hello", app="soak-b"))
    live.add(("soak-a", f"x@{'c' * 12}"))
    assert "never uploaded" in why(_answer(f"x@{'c' * 12}", "alpha says hello"))
    # a candidate answering inside its own gate (activating → rolled back) is not a wrong adapter; outside it is
    gate = {("soak-a", f"v3@{SHA_B[:12]}"): [(0.0, 1000.0)]}
    inside = _answer(f"v3@{SHA_B[:12]}", "beta says goodbye")
    assert classify_answer(inside, live, BASE_OF, PHRASES, gate) is None
    outside = {("soak-a", f"v3@{SHA_B[:12]}"): [(inside.ended + 1, inside.ended + 2)]}
    assert "never reached live" in classify_answer(inside, live, BASE_OF, PHRASES, outside)


def test_swap_windows_run_from_activating_to_the_end() -> None:
    record = _record("soak-a.1-u1", "v2", SHA_B, "live", history=[
        {"stage": "received", "at": "2030-01-01T00:00:00+00:00"},
        {"stage": "activating", "at": "2030-01-01T00:00:10+00:00"},
        {"stage": "live", "at": "2030-01-01T00:00:12+00:00"}])
    windows = swap_windows([record, _record("soak-a.2-u2", "bad", SHA_A, "failed", history=[])], margin_s=0)
    start = windows["soak-a"][0][0]
    assert len(windows["soak-a"]) == 1 and windows["soak-a"][0][1] - start == 2.0
    assert in_window(_answer(None, "", started=start + 1), windows)
    assert not in_window(_answer(None, "", started=start + 5), windows)
    assert not in_window(_answer(None, "", app="soak-b", started=start + 1), windows)


def _scenario() -> tuple[list[Op], list[Sent], dict[str, dict], list[Answer]]:
    ops = [Op(0, "good", "soak-a", "v2", "beta", 0.0), Op(1, "bad_base", "soak-a", "bad", "alpha", 1.0),
           Op(2, "forged", "soak-a", "f0002-huge", "alpha", 2.0, detail="huge")]
    sent = [Sent(ops[0], "soak-a.1-u1", sha256=SHA_B), Sent(ops[1], "soak-a.2-u2", sha256=SHA_A),
            Sent(ops[2], "soak-a.3-u3")]
    records = {r["id"]: r for r in (
        _record("soak-a.0-u0", "alpha", SHA_A, "live"), _record("soak-a.1-u1", "v2", SHA_B, "live"),
        _record("soak-a.2-u2", "bad", SHA_A, "failed", cause="content"),
        _record("soak-a.3-u3", "f0002-huge", None, "failed", cause="input"))}
    answers = [_answer(f"alpha@{SHA_A[:12]}", "alpha says hello"), _answer(f"v2@{SHA_B[:12]}", "beta says goodbye"),
               _answer(None, "", error="ConnectionError")]
    return ops, sent, records, answers


def test_a_clean_run_passes() -> None:
    ops, sent, records, answers = _scenario()
    summary = summarize(ops, sent, records, answers, BASE_OF, PHRASES)
    assert summary.exit_code == 0 and not any(summary.must_be_zero().values())
    assert summary.stages == {"live": 2, "failed": 2}
    assert (summary.chats, summary.chat_errors) == (3, 1)
    assert summary.by_kind["good"]["live"] == 1 and summary.by_kind["forged"]["failed"] == 1


def test_each_must_be_zero_figure_fails_the_run() -> None:
    def figures(ops, sent, records, answers) -> dict[str, int]:
        summary = summarize(ops, sent, records, answers, BASE_OF, PHRASES)
        assert summary.exit_code == 1
        return {k: v for k, v in summary.must_be_zero().items() if v}

    ops, sent, records, answers = _scenario()
    answers.append(_answer(f"alpha@{SHA_A[:12]}", "beta says goodbye"))  # old header, new weights
    assert figures(ops, sent, records, answers) == {"answers from a wrong adapter": 1}

    ops, sent, records, answers = _scenario()
    records["soak-a.1-u1"]["stage"] = "verifying"
    # its answers now come from a version that never reached live, too
    assert figures(ops, sent, records, answers) == {"records not terminal": 1, "answers from a wrong adapter": 1}

    ops, sent, records, answers = _scenario()
    del records["soak-a.3-u3"]
    assert figures(ops, sent, records, answers) == {"accepted requests without a record": 1}

    ops, sent, records, answers = _scenario()
    records["soak-a.2-u2"]["stage"] = "live"
    assert figures(ops, sent, records, answers) == {"refused content that went live": 1}


def test_a_refused_request_is_not_a_missing_record() -> None:
    ops, sent, records, answers = _scenario()
    sent[2] = Sent(ops[2], None, error="deploy request: no such adapter (HTTP 404)")
    del records["soak-a.3-u3"]
    summary = summarize(ops, sent, records, answers, BASE_OF, PHRASES)
    assert summary.exit_code == 0 and summary.by_kind["forged"]["refused"] == 1


def test_a_killed_server_is_out_until_its_next_complete_answer() -> None:
    answers = [_answer("v", "x", started=10), _answer(None, "", error="ConnectionError", started=21),
               _answer(None, "", error="HTTP 503", started=25), _answer("v", "x", started=30),
               _answer("v", "x", app="soak-b", started=22)]
    outages = outage_windows([("soak-a", 20.0)], answers)
    assert outages == {"soak-a": [(20.0, 30.2)]}
    assert [in_window(a, outages) for a in answers] == [False, True, True, True, False]
    assert outage_windows([("soak-b", 40.0)], answers) == {"soak-b": [(40.0, 40.0)]}  # no answer after it
