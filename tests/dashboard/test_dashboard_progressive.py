"""Progressive delivery on the dashboard, in Debian's Chromium against the stand-in API: a rollout in `canary` shows
its steps, weight and each step's figures by version, the quality gate's scores, the approval and the app's policy,
with *Promote* and *Abort*; a decision asks in a modal dialog (keyboard: Escape cancels) and then POSTs it, and the
next poll shows the new stage; one `awaiting_approval` offers approve / reject / abort; a 409 shows its message;
an ended rollout offers no decision; on a host that requires a key, decisions carry it as a header only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.dashboard.stub_api import POLICY, StubApi, serving

APP = "shop"


@pytest.fixture
def stub() -> Iterator[StubApi]:
    with serving(StubApi({APP: 5, "other": 2}, progressive=(APP,))) as api:
        yield api


@pytest.fixture
def page(browser: Browser, stub: StubApi) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{stub.url}/api/dashboard")
    expect(page.get_by_text("Showing 10 of 10 records")).to_be_visible()
    yield page
    context.close()


def _open(page: Page, record_id: str) -> None:
    page.get_by_role("button", name=f"Timeline of {record_id}").last.click()
    expect(page.locator("#timeline-title")).to_have_text(f"Timeline of {record_id}")


def _decisions(page: Page) -> list[str]:
    return page.locator("#record-actions button").all_inner_texts()


def test_a_canary_shows_weight_figures_scores_approval_and_policy(page: Page, stub: StubApi) -> None:
    canary = stub.records[APP][0]
    assert canary["stage"] == "canary"
    expect(page.locator("#apps tbody tr", has_text=APP)).to_contain_text("canary 50 %")
    expect(page.locator(f'#rollouts tbody tr[data-id="{canary["id"]}"]')).to_contain_text("canary 50 %")
    _open(page, canary["id"])

    expect(page.locator("#canary-summary")).to_have_text(
        "Steps 10 % → 50 % → 100 %; step 2 of 3, weight 50 %, held until " + page.evaluate(
            "iso => new Date(iso).toLocaleString(undefined, {dateStyle: 'short', timeStyle: 'medium'})",
            canary["canary"]["hold_until"]))
    rows = page.locator("#analysis tbody tr")
    expect(rows).to_have_count(2)  # step 1: one row per version
    assert rows.nth(0).locator("td").all_inner_texts() == ["1", "10 %", "pass", "alpha@000000000000", "180", "0.6 %",
                                                           "120 ms", ""]
    assert rows.nth(1).locator("td").all_inner_texts() == ["beta@000000000003", "20", "0.0 %", "132 ms"]

    gate = page.locator("#gate tbody tr")
    expect(page.locator("#gate-summary")).to_have_text("The candidate passed; at most 0.10 below live")
    assert gate.nth(0).locator("td").all_inner_texts()[:5] == ["adapter set", "candidate", "0.75", "3 / 4", "0.50"]
    expect(gate.nth(0)).to_contain_text("case 3: expected 'hello' (replied \"beta says goodbye\")")
    assert gate.nth(1).locator("td").all_inner_texts()[:4] == ["adapter set", "live", "0.75", "3 / 4"]
    expect(gate.nth(1)).to_contain_text("case 3: expected 'hello' (replied \"alpha says hello\")")

    expect(page.locator("#approval")).to_contain_text("Decisionapproved")
    expect(page.locator("#approval")).to_contain_text("Byana")
    expect(page.locator("#policy-source")).to_have_text("Source: the app's own policy")
    assert json.loads(page.locator("#policy").inner_text()) == POLICY
    assert any(q == f"/api/apps/{APP}/policy" for q, _ in stub.seen)
    assert _decisions(page) == ["Promote", "Abort"]


def test_abort_asks_then_posts_and_the_next_poll_shows_rolled_back(page: Page, stub: StubApi) -> None:
    canary = stub.records[APP][0]
    _open(page, canary["id"])
    abort = page.get_by_role("button", name=f"Abort {canary['id']}")

    abort.focus()  # from the keyboard: Enter opens the dialog, Escape cancels it and nothing is sent
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=f"Abort {canary['id']}?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("taken out of traffic")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(abort).to_be_focused()
    assert stub.decisions == []

    abort.click()
    dialog.get_by_role("button", name="Abort", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text(f"Abort sent to {canary['id']} (it was canary)")
    assert stub.decisions == [(f"/api/deployments/{canary['id']}/abort", b"{}")]
    row = page.locator(f'#rollouts tbody tr[data-id="{canary["id"]}"]')
    expect(row).to_contain_text("rolled_back", timeout=5000)
    expect(page.locator("#timeline li").last).to_contain_text("rolled_back")
    expect(page.locator("#record-actions")).to_be_hidden()  # nothing left to decide
    assert _decisions(page) == []


def test_awaiting_approval_offers_approve_reject_abort_and_approve_goes_on(page: Page, stub: StubApi) -> None:
    waiting = stub.records[APP][1]
    _open(page, waiting["id"])
    assert _decisions(page) == ["Approve", "Reject", "Abort"]
    expect(page.locator("#approval")).to_contain_text("Decisionwaiting")
    expect(page.locator("#canary-section")).to_be_hidden()  # no canary figures yet
    page.get_by_role("button", name=f"Approve {waiting['id']}").click()
    page.get_by_role("dialog").get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text(f"Approve sent to {waiting['id']} (it was awaiting_approval)")
    expect(page.locator("#timeline-facts")).to_contain_text("Stagecanary", timeout=5000)
    assert stub.decisions == [(f"/api/deployments/{waiting['id']}/approve", b"{}")]


def test_a_409_is_shown_with_its_message(page: Page, stub: StubApi) -> None:
    canary = stub.records[APP][0]
    stub.moved_on[canary["id"]] = "verifying"  # the rollout moved on after the page last read it
    _open(page, canary["id"])
    page.get_by_role("button", name=f"Promote {canary['id']}").click()
    page.get_by_role("dialog").get_by_role("button", name="Promote").click()
    expect(page.get_by_role("status")).to_have_text(
        f"Refused: deployment {canary['id']} is verifying: it takes no action")
    expect(page.get_by_role("status")).to_have_class("error")
    reads = len(stub.seen)
    for _ in range(50):  # until the next poll has read the API (fine): the refusal stays shown
        if len(stub.seen) >= reads + 4:
            break
        page.wait_for_timeout(200)
    expect(page.get_by_role("status")).to_contain_text("it takes no action")
    assert [path for path, _ in stub.decisions] == [f"/api/deployments/{canary['id']}/promote"]


def test_ended_and_plain_rollouts_offer_no_decision(page: Page, stub: StubApi) -> None:
    ended = stub.records[APP][2]
    _open(page, ended["id"])
    expect(page.locator("#canary-section")).to_be_visible()
    expect(page.locator("#analysis tbody tr")).to_have_count(3)  # step 1's two versions, step 2 promoted by hand
    expect(page.locator("#analysis tbody tr").nth(2)).to_contain_text("promote")
    expect(page.locator("#analysis tbody tr").nth(2)).to_contain_text("by ana")
    expect(page.locator("#record-actions")).to_be_hidden()
    plain = stub.records["other"][0]
    _open(page, plain["id"])
    for section in ("#record-actions", "#gate-section", "#approval-section", "#canary-section"):
        expect(page.locator(section)).to_be_hidden()
    expect(page.locator("#policy-source")).to_have_text(
        "Source: none: rollouts go to all traffic after the smoke chat")
    assert page.locator("button[data-action=abort], button[data-action=promote]").count() == 0

    stub.bad_policy[APP] = "policy.canary.steps: must end at 100"  # shown in its place, the page reads on
    _open(page, stub.records[APP][0]["id"])
    expect(page.locator("#policy-source")).to_have_text(
        "Cannot read it: policy_invalid: policy.canary.steps: must end at 100", timeout=5000)
    expect(page.get_by_role("status")).to_have_text("")


def test_decisions_carry_the_key_as_a_header_only(browser: Browser) -> None:
    key = "stub-key-abcdef0123"
    with serving(StubApi({APP: 1}, key=key, progressive=(APP,))) as stub:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{stub.url}/api/dashboard")
        expect(page.get_by_role("status")).to_contain_text("refused the request (401)")
        page.get_by_label("Function key").fill(key)
        page.keyboard.press("Enter")
        canary = stub.records[APP][0]
        _open(page, canary["id"])
        page.get_by_role("button", name=f"Abort {canary['id']}").click()
        page.get_by_role("dialog").get_by_role("button", name="Abort").click()
        expect(page.get_by_role("status")).to_contain_text("Abort sent")
        assert (f"/api/deployments/{canary['id']}/abort", key) in stub.seen
        assert not any(key in query for query, _ in stub.seen)
        context.close()


def test_a_narrow_window_keeps_the_canary_view_within_the_page(browser: Browser, stub: StubApi) -> None:
    """At 360 px the page does not scroll sideways: the wide tables scroll inside their own box."""
    context = browser.new_context(viewport={"width": 360, "height": 740})
    page = context.new_page()
    page.goto(f"{stub.url}/api/dashboard")
    _open(page, stub.records[APP][0]["id"])
    expect(page.locator("#analysis tbody tr")).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    box = page.locator("#record-actions").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 360
    context.close()
