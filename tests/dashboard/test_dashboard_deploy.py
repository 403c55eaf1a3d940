"""Deploying from the dashboard in Debian's Chromium on the embedded default: the tiny kit's beta adapter, picked as
a folder, is uploaded to a new app and watched to `live` without a reload; an adapter the browser can check (rank
over the limit) is refused before anything is sent; one only the server can judge (corrupt weights) is refused
with the server's reason and nothing is stored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.helpers import variant

pytestmark = pytest.mark.slow

APP = "browser-deploy"
LIVE_TIMEOUT_MS = 60_000


def test_deploy_a_folder_from_the_page_and_see_refusals(local_stack, browser: Browser, tmp_path: Path) -> None:
    kit = local_stack.kit
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.goto(f"{local_stack.url}/api/dashboard")
    page.evaluate("window.notReloaded = true")
    status = page.get_by_role("status")
    expect(page.locator("#updated")).to_contain_text("Updated", timeout=60_000)  # the app list is read (every app of
    # the shared stack: slow on a busy machine), so the page itself knows the app is new

    # an unknown app needs "create"; then the beta folder goes live and is shown without a reload
    page.get_by_label("Deploy to app").fill(APP)
    page.get_by_label("Adapter folder").set_input_files(kit.adapters["beta"])
    expect(page.get_by_label("Adapter name")).to_have_value("beta")
    expect(page.locator("#deploy-picked")).to_contain_text("2 files")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(status).to_contain_text(f"there is no app {APP}")
    assert posts == []
    page.get_by_label("create the app if it is new").check()
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(status).to_contain_text(f"Uploaded beta to {APP}: record ", timeout=15_000)
    record_id = status.inner_text().split("record ")[1].strip()
    row = page.locator(f'#rollouts tbody tr[data-id="{record_id}"]')
    expect(row).to_contain_text("live", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#timeline-title")).to_have_text(f"Timeline of {record_id}")
    expect(page.locator("#timeline li").last).to_contain_text("live")
    version = local_stack.api.deployment(record_id)["version"]
    expect(page.locator("#apps tbody tr", has_text=APP)).to_contain_text(version, timeout=10_000)
    assert posts == [f"{local_stack.url}/api/apps/{APP}/uploads?adapter=beta&create=1"]

    # a rank over MAX_LORA_RANK (16 on this stack) is refused in the browser: nothing is sent
    big = variant(kit.adapters["alpha"], tmp_path / "big", r=64)
    page.get_by_label("Deploy to app").fill(APP)
    page.get_by_label("Adapter folder").set_input_files(big)
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(status).to_contain_text("Not deployed (checked in the browser): rank_too_large")
    assert len(posts) == 1

    # corrupt weights only the server can judge: its reason is shown, nothing is stored
    broken = tmp_path / "broken"
    shutil.copytree(kit.adapters["alpha"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    page.get_by_label("Adapter folder").set_input_files(broken)
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(status).to_contain_text("Refused: invalid adapter: corrupt_safetensors", timeout=15_000)
    assert len(posts) == 2 and "adapter=broken" in posts[1]
    assert local_stack.store.list_adapter_blobs(APP, "broken") == {}
    assert page.evaluate("window.notReloaded") is True
    page.context.close()


def test_a_deploy_sends_the_key_as_a_header_and_files_by_relative_name(browser: Browser, tmp_path: Path) -> None:
    """On a host that requires a key: refused (401) until the key is typed; then the upload carries it only in the
    x-functions-key header, each file named by its path in the folder (the folder's own name and hidden files
    dropped)."""
    from tests.dashboard.stub_api import StubApi, serving

    folder = tmp_path / "gamma"
    (folder / "sub").mkdir(parents=True)
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"weights",
             "sub/notes.md": b"notes"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"junk")
    with serving(StubApi({"alpha": 1}, key="stub-key-0123456789")) as stub:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{stub.url}/api/dashboard")
        page.get_by_label("Deploy to app").fill("alpha")
        page.get_by_label("Adapter folder").set_input_files(folder)
        page.get_by_label("create the app if it is new").check()  # the page could not read the apps: 401
        with page.expect_response("**/api/uploads/rules") as refused:
            page.get_by_role("button", name="Deploy", exact=True).click()
        assert refused.value.status == 401
        expect(page.get_by_role("status")).to_contain_text("refused the request (401)")
        assert stub.uploads == []

        page.get_by_label("Function key").fill("stub-key-0123456789")
        page.keyboard.press("Enter")
        expect(page.get_by_text("Showing 1 of 1 records")).to_be_visible()
        page.get_by_role("button", name="Deploy", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Uploaded gamma to alpha: record alpha.")
        assert stub.uploads == [("/api/apps/alpha/uploads?adapter=gamma&create=1", files)]
        assert ("/api/apps/alpha/uploads?adapter=gamma&create=1", "stub-key-0123456789") in stub.seen
        assert not any("stub-key" in query for query, _ in stub.seen)
        context.close()
