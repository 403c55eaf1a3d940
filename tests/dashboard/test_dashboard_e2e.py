"""The dashboard in Debian's Chromium on the embedded default (Azurite + devhost running function_app): the page
lists the app and its rollouts; an upload appears and reaches `live` without a reload; a bad adapter's record shows
its reason; a rollout's timeline lists its stages; a rollback from the page (confirmed) goes live; a delete that is
not confirmed sends nothing, a confirmed one removes the app."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from orchestrations.dashboard import STATIC_FILES
from tests.e2e.helpers import deploy, variant, wait_idle

pytestmark = pytest.mark.slow

APP = "dashboard"
LIVE_TIMEOUT_MS = 60_000


def _row(page: Page, record_id: str):
    return page.locator(f'#rollouts tbody tr[data-id="{record_id}"]')


def test_watch_deploy_fail_timeline_and_roll_back(local_stack, browser: Browser, tmp_path: Path) -> None:
    kit = local_stack.kit
    first = deploy(local_stack, APP, kit.adapters["alpha"])
    assert first["stage"] == "live"

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    api_requests: list[str] = []
    page.on("request", lambda r: api_requests.append(f"{r.method} {r.url}"))
    page.goto(f"{local_stack.url}/api/dashboard")
    app_row = page.locator("#apps tbody tr", has_text=APP)
    expect(app_row).to_contain_text(first["version"])
    expect(app_row).to_contain_text("running")
    expect(_row(page, first["id"])).to_contain_text("live")
    page.evaluate("window.notReloaded = true")
    served = [page.content(), *(requests.get(f"{local_stack.url}/api/dashboard/static/{name}", timeout=5).text
                                for name in STATIC_FILES)]
    assert not any(local_stack.api_key in text for text in served)  # the stack's chat API key never reaches it

    # an upload appears and is watched to live; then a bad one shows its reason
    upload = local_stack.store.upload_adapter_folder(kit.adapters["beta"], APP, "beta")
    expect(_row(page, upload.deployment_id)).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(_row(page, upload.deployment_id)).to_contain_text("live", timeout=LIVE_TIMEOUT_MS)
    expect(app_row).to_contain_text(local_stack.api.deployment(upload.deployment_id)["version"], timeout=10_000)
    bad = local_stack.store.upload_adapter_folder(variant(kit.adapters["alpha"], tmp_path / "big", r=64), APP, "big")
    expect(_row(page, bad.deployment_id)).to_contain_text("failed", timeout=LIVE_TIMEOUT_MS)
    expect(_row(page, bad.deployment_id)).to_contain_text("rank_too_large")
    assert page.evaluate("window.notReloaded") is True

    # the timeline lists every stage the record went through
    page.get_by_role("button", name=f"Timeline of {upload.deployment_id}").first.click()
    stages = [h["stage"] for h in local_stack.api.deployment(upload.deployment_id)["history"]]
    assert stages[0] == "received" and stages[-1] == "live" and "verifying" in stages
    expect(page.locator("#timeline li")).to_have_count(len(stages))
    assert page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.stage)") == stages

    # a delete that is not confirmed sends nothing; a confirmed rollback goes live with the earlier version
    page.get_by_role("button", name=f"Delete {APP}").click()
    page.get_by_role("dialog", name=f"Delete {APP}?").get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name=f"Roll back {APP}").click()
    page.get_by_role("dialog", name=f"Roll back {APP}?").get_by_role("button", name="Roll back").click()
    expect(page.get_by_role("status")).to_contain_text(f"Rollback of {APP} requested", timeout=10_000)
    rollback_id = page.get_by_role("status").inner_text().split("record ")[1].split(" ")[0]
    expect(_row(page, rollback_id)).to_contain_text("live", timeout=LIVE_TIMEOUT_MS)
    expect(app_row).to_contain_text(first["version"], timeout=10_000)
    expect(page.locator("#timeline-title")).to_have_text(f"Timeline of {rollback_id}")
    assert local_stack.api.app(APP)["served"]["version"] == first["version"]
    assert not any(r.startswith("DELETE") for r in api_requests)
    assert sum(r.startswith("POST") and r.endswith(f"/api/apps/{APP}/rollback") for r in api_requests) == 1

    # a confirmed delete removes the app from the page
    wait_idle(local_stack, APP)
    page.get_by_role("button", name=f"Delete {APP}").click()
    page.get_by_role("dialog", name=f"Delete {APP}?").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text(f"Deletion of {APP} started: delete-{APP}.", timeout=15_000)
    expect(app_row).to_have_count(0, timeout=LIVE_TIMEOUT_MS)
    expect(_row(page, first["id"])).to_have_count(0)
    page.context.close()
