"""Faults on the embedded default (issue #11), each injected on loopback: every record ends in a terminal stage,
the served adapter stays the newest accepted content or the previous live one, and nothing needs cleaning up."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from activities.adapter_store import MARKER_NAME
from adapterctl.follow import follow
from tests.e2e.helpers import TIMEOUT, chat, deploy, variant, wait_idle
from tinykit import PHRASES

pytestmark = pytest.mark.slow
TERMINAL = {"live", "rolled_back", "failed", "superseded"}


def _all_terminal(stack, app: str) -> list[dict]:
    wait_idle(stack, app)
    records = stack.api.deployments(app)
    assert all(r["stage"] in TERMINAL for r in records), records
    return records


def _first_attempt_failed(stack, deployment_id: str) -> dict:
    """Wait until the record's first rollout attempt failed (`retrying`, or a second attempt running)."""
    deadline = time.monotonic() + TIMEOUT
    record = stack.api.deployment(deployment_id)
    while record["stage"] != "retrying" and record.get("attempts", 0) < 2:
        assert time.monotonic() < deadline and record["stage"] not in TERMINAL, record
        time.sleep(0.1)
        record = stack.api.deployment(deployment_id)
    return record


def test_engine_refusal_rolls_back_without_restart(local_stack, tmp_path: Path) -> None:
    """An adapter validation accepts but the engine refuses (base model named with a trailing '/') ends
    `rolled_back` naming the engine's reason, with no restart; the previous adapter keeps serving."""
    good = deploy(local_stack, "refusal", local_stack.kit.adapters["alpha"])
    base = json.loads((local_stack.kit.adapters["beta"] / "adapter_config.json").read_text())["base_model_name_or_path"]
    folder = variant(local_stack.kit.adapters["beta"], tmp_path / "slash", base_model_name_or_path=base.rstrip("/") + "/")
    record = deploy(local_stack, "refusal", folder, name="slash")
    assert record["stage"] == "rolled_back" and record["cause"] == "content", record
    assert "refused" in record["reason"] and record["activation"] == "hot_swap", record
    served = local_stack.api.app("refusal")["served"]
    assert served["version"] == good["version"]
    assert PHRASES["alpha"] in chat(local_stack, "refusal")


def test_unreadable_manifest_is_never_replaced_by_an_empty_one(local_stack) -> None:
    """The manifest cannot be read while a rollout activates: the record retries (cause transient) and nothing
    is written over the manifest; once it reads again, the same record goes live."""
    deploy(local_stack, "unread", local_stack.kit.adapters["alpha"])
    manifest = local_stack.state / "store" / "unread" / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_bytes(b"{not json")  # the server keeps serving alpha: it ignores an unreadable manifest
    uploaded = local_stack.store.upload_adapter_folder(local_stack.kit.adapters["beta"], "unread", "beta")
    record = _first_attempt_failed(local_stack, uploaded.deployment_id)
    assert record["cause"] == "transient" and "read_manifest" in record["reason"], record
    assert manifest.read_bytes() == b"{not json"
    assert PHRASES["alpha"] in chat(local_stack, "unread")
    manifest.write_bytes(good)
    record = follow(local_stack.api, uploaded.deployment_id, TIMEOUT, lambda _: None, interval=0.2)
    assert record["stage"] == "live", record
    assert PHRASES["beta"] in chat(local_stack, "unread")


def test_killed_inference_server_is_restarted_by_heal(local_stack) -> None:
    """SIGKILL the app's inference server: the reconciler's heal pass starts it again, serving the manifest."""
    deploy(local_stack, "healing", local_stack.kit.adapters["beta"])
    state = json.loads((local_stack.state / "platform" / "healing.json").read_text())
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            if PHRASES["beta"] in chat(local_stack, "healing"):
                break
        except Exception:  # noqa: BLE001 - down until healed
            pass
        time.sleep(0.5)
    else:
        raise AssertionError("the killed server never came back")
    reconciler = local_stack.api.app("healing")["reconciler"]
    assert reconciler["heals"] >= 1 and reconciler["last_heal"]["action"] == "restarted", reconciler


def test_requests_accepted_during_a_rollout_all_end(local_stack) -> None:
    """Two deploy requests accepted while a rollout runs: each keeps its record; the older ends `superseded`
    naming the newer, which goes live."""
    deploy(local_stack, "queued", local_stack.kit.adapters["alpha"])
    deploy(local_stack, "queued", local_stack.kit.adapters["beta"])
    running = local_stack.api.deploy("queued", "alpha", force_restart=True)
    first = local_stack.api.deploy("queued", "beta")
    second = local_stack.api.deploy("queued", "alpha")
    ends = {r["id"]: follow(local_stack.api, r["id"], TIMEOUT, lambda _: None, interval=0.2)
            for r in (running, first, second)}
    assert ends[first["id"]]["stage"] == "superseded" and ends[first["id"]]["superseded_by"] == second["id"]
    assert ends[second["id"]]["stage"] == "live"
    assert ends[running["id"]]["stage"] in ("live", "superseded")
    assert PHRASES["alpha"] in chat(local_stack, "queued")
    _all_terminal(local_stack, "queued")


def test_transient_staging_fault_is_retried_then_goes_live(local_stack) -> None:
    """Staging fails past the activity retries (the store path is unusable): the record waits `retrying`, and
    once the fault is gone the same record goes live, with no re-upload."""
    deploy(local_stack, "flaky", local_stack.kit.adapters["alpha"])
    blocker = local_stack.state / "store" / "flaky" / "adapters" / "beta"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")  # every write under it fails with NotADirectoryError
    uploaded = local_stack.store.upload_adapter_folder(local_stack.kit.adapters["beta"], "flaky", "beta")
    record = _first_attempt_failed(local_stack, uploaded.deployment_id)
    assert record["cause"] == "transient" and "stage_adapter" in record["reason"], record
    blocker.unlink()
    record = follow(local_stack.api, uploaded.deployment_id, TIMEOUT, lambda _: None, interval=0.2)
    assert record["stage"] == "live" and record["attempts"] >= 2, record
    assert PHRASES["beta"] in chat(local_stack, "flaky")


def test_forged_markers_end_failed_and_nothing_wedges(local_stack) -> None:
    """Markers with a size of 1e400, 50,000 nested lists or a date of 'yesterday' each end `failed`; the app's
    status answers 200, the reconciler stays healthy, and the next good upload goes live."""
    deploy(local_stack, "forged", local_stack.kit.adapters["alpha"])
    container = local_stack.store.container
    forged = {
        "huge": '{"files": {"a.json": {"size": 1e400, "sha256": "' + "0" * 64 + '"}}, "sha256": "' + "0" * 64 + '"}',
        "nested": "[" * 50_000 + "]" * 50_000,
        "dated": json.dumps({"files": {"a.json": {"size": 2, "sha256": "0" * 64}}, "sha256": "0" * 64,
                             "uploaded_at": "yesterday"}),
    }
    for name, text in forged.items():
        container.upload_blob(f"forged/{name}/{MARKER_NAME}", text, overwrite=True)
    good = deploy(local_stack, "forged", local_stack.kit.adapters["beta"])
    assert good["stage"] == "live"
    records = {r["adapter"]: r for r in _all_terminal(local_stack, "forged")}
    assert all(records[n]["stage"] == "failed" and "upload refused" in records[n]["reason"] for n in forged)
    info = requests.get(f"{local_stack.url}/api/apps/forged", timeout=30)
    assert info.status_code == 200 and info.json()["reconciler"]["phase"] != "error"


def test_upload_under_an_invalid_app_name_is_ignored(local_stack) -> None:
    """`swap.x/…` is not app `swap`'s and not an app at all: no record, no server, not listed."""
    blob = local_stack.store.container.download_blob
    deploy(local_stack, "named", local_stack.kit.adapters["alpha"])
    marker = blob(f"named/alpha/{MARKER_NAME}").readall()
    before = len(local_stack.api.deployments("named"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        local_stack.store.container.upload_blob(f"named.x/alpha/{name}", blob(f"named/alpha/{name}").readall())
    local_stack.store.container.upload_blob(f"named.x/alpha/{MARKER_NAME}", marker)
    time.sleep(3)  # several blob-poller passes
    assert "named.x" not in local_stack.api.apps()
    assert len(local_stack.api.deployments("named")) == before
    assert not (local_stack.state / "platform" / "named.x.json").exists()


def test_lost_container_answers_and_recovers(local_stack) -> None:
    """The upload container vanishes (what an emulator restarted in memory looks like): the status API answers
    200, the container is made again, and a new upload goes live."""
    deploy(local_stack, "lost", local_stack.kit.adapters["alpha"])
    local_stack.store.container.delete_container()
    assert requests.get(f"{local_stack.url}/api/apps", timeout=30).status_code == 200
    info = requests.get(f"{local_stack.url}/api/apps/lost", timeout=30)
    assert info.status_code == 200 and info.json()["served"]["adapter"] == "alpha"
    assert local_stack.store.container.exists()
    assert deploy(local_stack, "lost", local_stack.kit.adapters["beta"])["stage"] == "live"
    assert PHRASES["beta"] in chat(local_stack, "lost")


def test_status_api_answers_odd_input_with_4xx(local_stack) -> None:
    """Odd ids and parameters are 4xx with a JSON reason, a damaged record blob does not break the app's status,
    and a deploy request for an adapter whose marker is forged is refused (409) naming why."""
    base = f"{local_stack.url}/api"
    deploy(local_stack, "odd", local_stack.kit.adapters["alpha"])
    for path, status in (("apps/odd/deployments?limit=%C2%B2", 400), ("apps/odd/deployments?limit=0", 400),
                         ("deployments/nothing-like-an-id", 404), (f"deployments/odd.{'9' * 2000}", 404),
                         ("deployments/provision-odd.20260101T000000000000", 404)):
        resp = requests.get(f"{base}/{path}", timeout=30)
        assert resp.status_code == status and resp.json()["error"]["message"], (path, resp.status_code, resp.text)
    local_stack.store.container.upload_blob("odd/_deployments/odd.20260101T000000000000-rabcdef.json", b"\xff")
    assert requests.get(f"{base}/apps/odd", timeout=30).status_code == 200
    assert requests.get(f"{base}/apps/odd/deployments", timeout=30).status_code == 200
    local_stack.store.container.upload_blob(f"odd/forged/{MARKER_NAME}", b"[[[")
    refused = requests.post(f"{base}/apps/odd/deployments", json={"adapter": "forged"}, timeout=30)
    assert refused.status_code == 409 and "invalid_marker" in refused.json()["error"]["message"], refused.text
