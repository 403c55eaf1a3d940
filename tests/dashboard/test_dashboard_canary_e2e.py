"""A canary watched and aborted from the dashboard, in Debian's Chromium on the embedded default: an app whose
policy holds each canary step for two minutes (`PUT /api/apps/{app}/policy`), beta uploaded over a live alpha; the
page shows the rollout in `canary` at 50 % with *Promote* and *Abort*; *Abort*, confirmed in the page's dialog, ends
the record `rolled_back`, the page shows it without a reload with the hold's figures by version (chats of 12
callers during the hold, both versions answering), and alpha is still served."""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import Browser, expect

from tests.e2e.helpers import deploy, wait_idle

pytestmark = pytest.mark.slow

CALLERS = 12
APP = "canary-page"  # no other test's app name contains it, nor is contained in it
POLICY = {"canary": {"steps": [50, 100], "hold_s": 120}}
TIMEOUT_MS = 90_000


def chat_as(endpoint: str, key: str, caller: str) -> str:
    """One short chat as `caller` (OpenAI's `user`) through the app's endpoint; the version that answered."""
    answer = requests.post(f"{endpoint}/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                           json={"model": "live", "user": caller, "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Adapter-Version"]


def test_abort_a_canary_from_the_page(local_stack, browser: Browser) -> None:
    kit = local_stack.kit
    alpha = deploy(local_stack, APP, kit.adapters["alpha"])
    assert alpha["stage"] == "live"
    answer = requests.put(f"{local_stack.url}/api/apps/{APP}/policy", json=POLICY, timeout=10)
    assert answer.status_code == 200 and answer.json()["source"] == "app", answer.text
    wait_idle(local_stack, APP)

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{local_stack.url}/api/dashboard")
    page.evaluate("window.notReloaded = true")
    upload = local_stack.store.upload_adapter_folder(kit.adapters["beta"], APP, "beta")
    row = page.locator(f'#rollouts tbody tr[data-id="{upload.deployment_id}"]')
    expect(row).to_contain_text("canary 50 %", timeout=TIMEOUT_MS)
    expect(page.locator("#apps tbody tr", has_text=APP)).to_contain_text("canary 50 %")

    page.get_by_role("button", name=f"Timeline of {upload.deployment_id}").first.click()
    expect(page.locator("#canary-summary")).to_contain_text("Steps 50 % → 100 %; step 1 of 2, weight 50 %")
    expect(page.locator("#policy-source")).to_have_text("Source: the app's own policy")
    endpoint = local_stack.api.app(APP)["endpoint"]
    served = {chat_as(endpoint, local_stack.api_key, f"caller-{i}") for i in range(CALLERS)}  # traffic in the hold
    assert served == {alpha["version"], f"beta@{upload.sha256[:12]}"}, served  # 50 %: both versions answer
    page.get_by_role("button", name=f"Abort {upload.deployment_id}").click()
    page.get_by_role("dialog", name=f"Abort {upload.deployment_id}?").get_by_role("button", name="Abort").click()
    expect(page.get_by_role("status")).to_contain_text(f"Abort sent to {upload.deployment_id} (it was canary)")

    expect(row).to_contain_text("rolled_back", timeout=TIMEOUT_MS)
    expect(page.locator("#timeline li").last).to_contain_text("rolled_back")
    expect(page.locator("#record-actions")).to_be_hidden()
    record = local_stack.api.deployment(upload.deployment_id)
    assert record["stage"] == "rolled_back"
    step = record["canary"]["analysis"][-1]
    assert step["verdict"] == "abort"
    assert sum(f["requests"] for f in step["figures"].values()) == CALLERS  # the hold's figures, both versions
    figures = page.locator("#analysis tbody")
    for version, f in step["figures"].items():  # the page shows the same figures by version
        expect(figures.locator("tr", has_text=version)).to_contain_text(str(f["requests"]))
    assert local_stack.api.app(APP)["served"]["version"] == alpha["version"]
    assert page.evaluate("window.notReloaded") is True
    page.context.close()
