"""End to end on the embedded default: uploads become live rollouts; bad adapters fail and change nothing;
a burst ends with the newest served, one rollout at a time; the HTTP deploy API and the restart path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests

from tests.e2e.helpers import chat, deploy, rollout_of_adapter, variant, wait_idle
from tinykit import PHRASES

pytestmark = pytest.mark.slow


def test_upload_goes_live_and_hot_swaps(local_stack) -> None:
    """alpha then beta: each rollout walks every stage to live; the second one is a hot swap."""
    first = deploy(local_stack, "swap", local_stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    assert [h["stage"] for h in first["history"]] == [
        "received", "validating", "staging", "provisioning", "activating", "verifying", "live"]
    assert PHRASES["alpha"] in chat(local_stack, "swap")
    second = deploy(local_stack, "swap", local_stack.kit.adapters["beta"])
    assert second["stage"] == "live" and second["activation"] == "hot_swap"
    assert PHRASES["beta"] in chat(local_stack, "swap")
    assert PHRASES["alpha"] in chat(local_stack, "swap", model="alpha")  # older adapters stay addressable
    served = local_stack.api.app("swap")["served"]
    assert served["adapter"] == "beta" and served["version"] == second["version"]


def _bad_adapters(kit, root: Path) -> dict[str, tuple[Path, str]]:
    """Each bad adapter folder with the validation code its rollout must fail with."""
    alpha = kit.adapters["alpha"]
    out: dict[str, tuple[Path, str]] = {}
    corrupt = variant(alpha, root / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    out["corrupt"] = (corrupt, "corrupt_safetensors")
    pickled = root / "pickled"
    pickled.mkdir()
    shutil.copy(alpha / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04\x95" + b"\0" * 32)
    out["pickled"] = (pickled, "pickle_file")
    out["wrongbase"] = (variant(alpha, root / "wrongbase", base_model_name_or_path="other-model"), "base_model_mismatch")
    out["bigrank"] = (variant(alpha, root / "bigrank", r=64), "rank_too_large")
    noconfig = variant(alpha, root / "noconfig")
    (noconfig / "adapter_config.json").unlink()
    out["noconfig"] = (noconfig, "missing_config")
    empty = variant(alpha, root / "empty")
    (empty / "adapter_config.json").write_bytes(b"")
    out["empty"] = (empty, "empty_file")
    oversize = variant(alpha, root / "oversize")
    (oversize / "notes.txt").write_bytes(b"x" * (2 << 20))  # MAX_ADAPTER_MB=1 in the test stack
    out["oversize"] = (oversize, "too_large")
    return out


def test_bad_adapters_fail_with_reason_and_keep_serving(local_stack, tmp_path: Path) -> None:
    """Every kind of bad adapter ends `failed` naming its reason; the live adapter keeps serving."""
    good = deploy(local_stack, "guarded", local_stack.kit.adapters["alpha"])
    assert good["stage"] == "live"
    for name, (folder, code) in _bad_adapters(local_stack.kit, tmp_path).items():
        record = deploy(local_stack, "guarded", folder, name=f"bad-{name}")
        assert record["stage"] == "failed", (name, record)
        assert code in record["reason"], (name, record["reason"])
        assert "activating" not in [h["stage"] for h in record["history"]]
    served = local_stack.api.app("guarded")["served"]
    assert served["adapter"] == "alpha" and served["version"] == good["version"]
    assert PHRASES["alpha"] in chat(local_stack, "guarded")


def test_traversal_and_broken_markers_fail(local_stack) -> None:
    """A marker naming '../' files, or listing a file that is missing, ends `failed`; nothing else changes."""
    container = local_stack.store.container
    deploy(local_stack, "markers", local_stack.kit.adapters["beta"])
    before = local_stack.api.app("markers")["served"]
    marker = {"files": {"../../escape.json": {"size": 2, "sha256": "0" * 64}}, "sha256": "0" * 64}
    created = local_stack.api.deployments("markers")[0]["accepted_at"]
    container.upload_blob("markers/traversal/_COMPLETE", json.dumps(marker), overwrite=True)
    record = rollout_of_adapter(local_stack, "markers", "traversal", after=created)
    assert record["stage"] == "failed" and "escape" in record["reason"]
    assert local_stack.api.app("markers")["served"] == before


def test_burst_of_uploads_ends_with_newest_one_at_a_time(local_stack, tmp_path: Path) -> None:
    """5 uploads in a burst: the newest ends served, every upload's record ends (older ones `superseded` naming
    the winner, unless rolled out first), and no two rollouts of the app ever overlap."""
    kit = local_stack.kit
    names = []
    for i in range(5):
        src = kit.adapters["alpha" if i % 2 == 0 else "beta"]
        folder = variant(src, tmp_path / f"burst{i}", revision=i)
        local_stack.store.upload_adapter_folder(folder, "burst", f"burst{i}")
        names.append(folder)
    newest_sha = local_stack.store.get_complete("burst", "burst4").sha256
    winner = rollout_of_adapter(local_stack, "burst", "burst4")
    info = wait_idle(local_stack, "burst")
    assert info["served"]["adapter"] == "burst4" and info["served"]["sha256"] == newest_sha
    assert PHRASES["alpha"] in chat(local_stack, "burst")  # burst4 carries alpha's weights
    records = local_stack.api.deployments("burst")
    assert sorted(r["adapter"] for r in records) == [f"burst{i}" for i in range(5)]
    for record in records:
        assert record["stage"] in ("live", "superseded"), record
        if record["stage"] == "superseded":
            newer = {r["id"] for r in records if r["accepted_at"] >= record["accepted_at"] and r is not record}
            assert record["superseded_by"] in newer, record
    assert winner["stage"] == "live"
    rolled = [[h["at"] for h in r["history"] if h["stage"] != "received"] for r in records]
    spans = sorted((at[0], at[-1]) for at in rolled if at and len(at) > 1)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans


def test_http_deploy_api_and_restart_path(local_stack) -> None:
    """POST deployments with force_restart rolls a stored adapter out through a restart; bad input is a 4xx."""
    deploy(local_stack, "restarts", local_stack.kit.adapters["alpha"])
    deploy(local_stack, "restarts", local_stack.kit.adapters["beta"])
    base = f"{local_stack.url}/api/apps"
    bad = requests.post(f"{base}/restarts/deployments", json={}, timeout=10)
    assert bad.status_code == 400 and "adapter" in bad.json()["error"]["message"]
    missing = requests.post(f"{base}/restarts/deployments", json={"adapter": "ghost"}, timeout=10)
    assert missing.status_code == 404 and "ghost" in missing.json()["error"]["message"]
    bad_app = requests.post(f"{base}/Bad_App/deployments", json={"adapter": "alpha"}, timeout=10)
    assert bad_app.status_code == 400 and "app name" in bad_app.json()["error"]["message"]
    started = local_stack.api.deploy("restarts", "alpha", force_restart=True)
    from adapterctl.follow import follow

    record = follow(local_stack.api, started["id"], 180, lambda _: None, interval=0.2)
    assert record["stage"] == "live" and record["activation"] == "restart", record
    assert PHRASES["alpha"] in chat(local_stack, "restarts")
    assert local_stack.api.deployment(started["id"])["id"] == started["id"]
