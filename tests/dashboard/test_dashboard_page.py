"""The dashboard in Debian's Chromium against a stand-in status API: 500 records render at once, 50 rows at a
time, filters narrow them; a record's timeline opens from the keyboard; on a host that requires a function key the
page asks for it, keeps it for the tab and sends it only as the x-functions-key header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.dashboard.stub_api import StubApi, serving

KEY = "function-key-0123456789"


@pytest.fixture
def many(browser: Browser) -> Iterator[tuple[Page, StubApi]]:
    with serving(StubApi({"alpha": 200, "beta": 200, "gamma": 100})) as stub:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page(), stub
        context.close()


def test_500_records_first_view_under_a_second_and_filters(many: tuple[Page, StubApi]) -> None:
    page, stub = many
    page.goto(f"{stub.url}/api/dashboard")
    expect(page.get_by_text("Showing 50 of 500 records")).to_be_visible(timeout=5000)
    first_view_ms = page.evaluate("performance.getEntriesByName('dashboard:first-view')[0].startTime")
    assert first_view_ms < 1000  # from navigation to the first view with every record read and 50 drawn
    assert page.locator("#rollouts tbody tr").count() == 50  # only what is shown is drawn
    assert page.locator("#apps tbody tr").count() == 3
    assert {q for q, _ in stub.seen if "/deployments?" in q} >= {f"/api/apps/{a}/deployments?limit=200"
                                                                 for a in ("alpha", "beta", "gamma")}

    page.get_by_role("button", name="Show more").click()
    expect(page.get_by_text("Showing 100 of 500 records")).to_be_visible()
    page.get_by_label("App", exact=True).select_option("gamma")
    expect(page.get_by_text("Showing 50 of 100 records")).to_be_visible()
    page.get_by_label("Stage").select_option("failed")
    expect(page.get_by_text("Showing 14 of 14 records")).to_be_visible()  # i % 7 == 3 for i < 100
    page.get_by_label("Text").fill("record 94")
    expect(page.get_by_text("Showing 1 of 1 records")).to_be_visible()
    expect(page.locator("#rollouts tbody tr").first).to_contain_text("rank_too_large: record 94")


def test_timeline_opens_from_the_keyboard(many: tuple[Page, StubApi]) -> None:
    page, stub = many
    page.goto(f"{stub.url}/api/dashboard")
    record = stub.records["beta"][3]  # a failed one
    page.get_by_label("Text").fill(record["id"])
    button = page.get_by_role("button", name=f"Timeline of {record['id']}").last
    button.focus()
    page.keyboard.press("Enter")
    timeline = page.locator("#timeline li")
    expect(timeline).to_have_count(3)
    assert [timeline.nth(i).get_attribute("data-stage") for i in range(3)] == ["received", "validating", "failed"]
    expect(timeline.nth(0)).to_contain_text("took 2.0 s")
    expect(page.locator("#timeline-facts")).to_contain_text("rank_too_large: record 3")
    expect(page.locator("#timeline-facts")).to_contain_text("Took4.0 s")
    expect(page.locator("#timeline-title")).to_be_focused()


def test_a_host_that_requires_a_key_gets_it_as_a_header_only(browser: Browser) -> None:
    with serving(StubApi({"alpha": 3}, key=KEY)) as stub:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{stub.url}/api/dashboard")
        expect(page.get_by_role("status")).to_contain_text("refused the request (401)")
        expect(page.get_by_label("Function key")).to_be_focused()
        assert KEY not in page.content()

        page.get_by_label("Function key").fill(KEY)
        page.keyboard.press("Enter")
        expect(page.get_by_text("Showing 3 of 3 records")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('dashboard.functionKey')") == KEY
        assert page.get_by_label("Function key").input_value() == ""  # not left in the field
        api_calls = [(q, k) for q, k in stub.seen if not q.startswith("/api/dashboard")]
        assert any(k == KEY for _, k in api_calls) and not any(KEY in q for q, _ in stub.seen)
        assert all(k is None for q, k in stub.seen if q.startswith("/api/dashboard"))  # the page needs none

        page.reload()  # the tab keeps it
        expect(page.get_by_text("Showing 3 of 3 records")).to_be_visible()
        other = context.new_page()  # another tab does not
        other.goto(f"{stub.url}/api/dashboard")
        expect(other.get_by_role("status")).to_contain_text("refused the request (401)")
        page.get_by_role("button", name="Forget key").click()
        assert page.evaluate("sessionStorage.getItem('dashboard.functionKey')") is None
        context.close()
