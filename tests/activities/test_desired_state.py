"""Desired state against Azurite: newest complete upload wins, explicit deploy requests, app listing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.adapter_store import AdapterStore, BlobStoreSettings
from activities.desired_state import DesiredState
from devhost.azurite import Azurite
from tests.activities.lora_builder import adapter_files, write_adapter

pytestmark = pytest.mark.azurite


@pytest.fixture
def desired(azurite: Azurite, container_name: str) -> Iterator[DesiredState]:
    """Desired state over a fresh container."""
    store = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string, container=container_name))
    store.ensure_container()
    yield DesiredState(store)
    store.close()


def upload(desired: DesiredState, tmp_path: Path, app: str, name: str, seed: str) -> str:
    folder = write_adapter(tmp_path / f"{app}-{name}-{seed}", adapter_files(seed=seed))
    return desired.store.upload_adapter_folder(folder, app, name).sha256


def test_nothing_uploaded_means_nothing_desired(desired: DesiredState) -> None:
    """An app with no uploads has no desired adapter."""
    assert desired.resolve("demo") is None


def test_newest_complete_upload_wins(desired: DesiredState, tmp_path: Path) -> None:
    """Of several uploads the newest marker wins; an incomplete upload is ignored."""
    upload(desired, tmp_path, "demo", "alpha", "1")
    newest = upload(desired, tmp_path, "demo", "beta", "2")
    desired.store.container.upload_blob("demo/gamma/adapter_config.json", b"{}")  # no marker: incomplete
    got = desired.resolve("demo")
    assert got is not None and got["adapter"] == "beta" and got["sha256"] == newest
    assert "request_id" not in got


def test_explicit_request_wins_until_a_newer_upload(desired: DesiredState, tmp_path: Path) -> None:
    """A deploy request for an older adapter wins over older uploads, and loses to a newer upload."""
    alpha = upload(desired, tmp_path, "demo", "alpha", "1")
    upload(desired, tmp_path, "demo", "beta", "2")
    time.sleep(0.01)
    desired.request_deployment("demo", "alpha", "demo.req1", force_restart=True)
    got = desired.resolve("demo")
    assert got["adapter"] == "alpha" and got["sha256"] == alpha
    assert got["request_id"] == "demo.req1" and got["force_restart"] is True
    time.sleep(0.01)
    gamma = upload(desired, tmp_path, "demo", "gamma", "3")
    assert desired.resolve("demo")["sha256"] == gamma


def test_request_for_missing_adapter_is_a_lookup_error(desired: DesiredState) -> None:
    """Deploying an adapter that was never uploaded fails with LookupError (HTTP 404 upstream)."""
    with pytest.raises(LookupError):
        desired.request_deployment("demo", "ghost", "demo.req2")


def test_list_apps(desired: DesiredState, tmp_path: Path) -> None:
    """Apps are the top-level folders of the container."""
    upload(desired, tmp_path, "one", "alpha", "1")
    upload(desired, tmp_path, "two", "alpha", "1")
    assert desired.list_apps() == ["one", "two"]


def test_newest_broken_upload_is_still_desired(desired: DesiredState, tmp_path: Path) -> None:
    """A marker whose files are missing still becomes desired (its rollout then fails), marked broken."""
    upload(desired, tmp_path, "demo", "alpha", "1")
    time.sleep(1.1)  # marker times have whole-second resolution
    upload(desired, tmp_path, "demo", "beta", "2")
    desired.store.container.delete_blob("demo/beta/adapter_model.safetensors")
    got = desired.resolve("demo")
    assert got["adapter"] == "beta" and got["sha256"].startswith("broken:beta:")
