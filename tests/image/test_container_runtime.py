"""End to end with the container runtime: the embedded default (Azurite + devhost + the orchestrator) with each app's
server run from the built image (LOCAL_RUNTIME=container) instead of a bare process. Skipped unless INFERENCE_IMAGE
names a local image (`make image`; CI runs it in its image step).

Upload → live served by a container (the image, its non-root user, the store mounted read-only), a hot swap to a
second adapter inside the same container, and no container left once the stack stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import chat, deploy
from tests.image.engine import IMAGE, docker, needs_image
from tinykit import PHRASES, KitPaths

pytestmark = needs_image
APP = "boxed"


def _containers(state: Path) -> list[dict]:
    """The containers this stack's platform runs (named `lora-<scope>-<app>`), as `docker ps` lists them."""
    from activities.platform.local import LocalPlatform, LocalPlatformSettings

    name = LocalPlatform(LocalPlatformSettings(state_dir=state / "platform", store_root=state / "store")
                         ).container_name(APP)
    out = docker("ps", "--all", "--filter", f"name=^{name}$", "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def boxed_stack(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The embedded default with LOCAL_RUNTIME=container; no container of it may outlive it."""
    from devhost.up import local_stack

    extra = {"LOCAL_RUNTIME": "container", "LOCAL_INFERENCE_IMAGE": IMAGE, "ROLLOUT_HOT_SWAP_TIMEOUT_S": "30",
             "ROLLOUT_RESTART_TIMEOUT_S": "120"}
    with local_stack(tmp_path_factory.mktemp("boxed"), tiny_kit.root, extra_env=extra) as stack:
        yield stack
    assert not _containers(stack.state), "a container outlived the stack"


def test_upload_goes_live_in_a_container_then_hot_swaps(boxed_stack) -> None:
    """alpha goes live served by the image's container; beta is then hot-swapped into the same container."""
    kit = boxed_stack.kit
    record = deploy(boxed_stack, APP, kit.adapters["alpha"], "alpha")
    assert record["stage"] == "live", record
    assert PHRASES["alpha"] in chat(boxed_stack, APP)

    [container] = _containers(boxed_stack.state)
    assert container["Image"] == IMAGE and container["State"] == "running", container
    name = container["Names"]
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    healthcheck = json.loads(docker("image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", IMAGE).stdout)
    assert healthcheck[0] == "CMD-SHELL", healthcheck  # the image's own check, run as docker runs it: it passes
    assert docker("exec", name, "sh", "-c", healthcheck[1], check=False).returncode == 0
    mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", name).stdout)
    binds = {m["Destination"]: m["RW"] for m in mounts if m["Type"] == "bind"}  # (the image's VOLUME /models too)
    assert binds == {"/adapters": False, "/adapters/_replicas": True, "/models/base": False}, mounts
    assert boxed_stack.api.app(APP)["endpoint"]

    record = deploy(boxed_stack, APP, kit.adapters["beta"], "beta")
    assert record["stage"] == "live", record
    assert PHRASES["beta"] in chat(boxed_stack, APP)
    [same] = _containers(boxed_stack.state)
    assert same["ID"] == container["ID"], "the hot swap restarted the container"
    deadline = time.monotonic() + 30  # the container's own report (its user writes through the writable mount)
    while time.monotonic() < deadline:
        reports = boxed_stack.api.app(APP).get("replicas_observed") or []
        if any(r.get("alias_version", "").startswith("beta@") and not r.get("stale") for r in reports):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no fresh replica report serving beta: {reports}")
