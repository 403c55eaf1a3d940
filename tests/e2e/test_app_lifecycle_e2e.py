"""End to end on the embedded default: an app's lifecycle. Rollback redeploys the previous version (and a named
one) as normal rollouts with their own records; deleting the app stops its server and removes its state, the heal
pass does not bring it back, and the name can start a new app afterwards."""

from __future__ import annotations

import time

import pytest
import requests

from adapterctl.api import ApiError
from adapterctl.follow import follow
from adapterctl.lifecycle import delete_app, rollback
from tests.e2e.helpers import TIMEOUT, chat, deploy, wait_idle
from tinykit import PHRASES

pytestmark = pytest.mark.slow


def test_rollback_then_delete_then_a_new_life(local_stack) -> None:
    app = "lifecycle"
    kit = local_stack.kit
    alpha = deploy(local_stack, app, kit.adapters["alpha"])
    beta = deploy(local_stack, app, kit.adapters["beta"])
    assert alpha["stage"] == beta["stage"] == "live"
    assert PHRASES["beta"] in chat(local_stack, app)

    started = rollback(local_stack.api, app)
    assert started["rollback_of"] == beta["version"] and started["rollback_to"] == alpha["version"]
    record = follow(local_stack.api, started["id"], TIMEOUT, lambda _: None, interval=0.1)
    assert record["stage"] == "live" and record["version"] == alpha["version"], record
    assert record["source"] == "request" and record["rollback_to"] == alpha["version"]
    assert PHRASES["alpha"] in chat(local_stack, app)
    assert local_stack.api.app(app)["served"]["version"] == alpha["version"]

    again = rollback(local_stack.api, app, beta["version"])
    assert follow(local_stack.api, again["id"], TIMEOUT, lambda _: None, interval=0.1)["stage"] == "live"
    assert PHRASES["beta"] in chat(local_stack, app)

    info = wait_idle(local_stack, app)
    endpoint = info["endpoint"]
    deletion = delete_app(local_stack.api, app)
    done = follow(local_stack.api, deletion["id"], TIMEOUT, lambda _: None, interval=0.1)
    assert done["state"] == "deleted" and done["platform"] == "deleted" and done["store"] is True, done
    with pytest.raises(ApiError) as missing:
        local_stack.api.app(app)
    assert missing.value.status == 404
    assert app not in local_stack.api.apps()
    with pytest.raises(requests.RequestException):
        requests.get(f"{endpoint}/health", timeout=2)
    platform_state = local_stack.state / "platform" / f"{app}.json"
    assert not platform_state.exists() and not (local_stack.state / "store" / app).exists()
    time.sleep(4)  # longer than the test stack's heal interval (3 s): nothing brings the app back
    assert not platform_state.exists()
    with pytest.raises(ApiError):
        local_stack.api.app(app)
    assert local_stack.api.deployment(deletion["id"])["state"] == "deleted"  # the deletion's own record stays

    fresh = deploy(local_stack, app, kit.adapters["alpha"])
    assert fresh["stage"] == "live", fresh
    assert [r["id"] for r in local_stack.api.deployments(app)] == [fresh["id"]]  # a new life: no old records
    assert PHRASES["alpha"] in chat(local_stack, app)
