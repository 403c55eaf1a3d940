"""End to end on the embedded default with 3 local replicas per app (`LOCAL_REPLICAS=3`, `devhost up --replicas`):
the revision runner's replicas `<app>--1-<i>` each report, and the gate counts all of them.

The stack is tests/e2e/conftest.py's `replicas_stack` (one for every module that uses it).

- one replica refuses the candidate (the test hook `INFERENCE_FAULT_REFUSE_LOAD`, passed to the replicas because the
  host's environment sets it): the rollout ends `rolled_back` and every replica serves the previous version again;
- a replica killed (SIGKILL) while the rollout runs is restarted under its name, converges from the manifest, and is
  counted: the rollout ends live with all three replicas counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import pytest

from adapterctl.api import stream_chat
from adapterctl.follow import follow
from devhost.up import configure, platform_settings
from tests.e2e.helpers import TIMEOUT, deploy, listed, served_version, wait_until
from tinykit import PHRASES

MID_ROLLOUT = ("staging", "provisioning", "activating", "verifying")


def revision_replicas(stack: Any, app: str) -> list[str]:
    """The names of the app's serving revision's three replicas, `<app>--<n>-0..2`."""
    names = sorted(listed(stack, app))
    assert len(names) == 3 and len({n.rsplit("-", 1)[0] for n in names}) == 1, names
    assert [n.rsplit("-", 1)[1] for n in names] == ["0", "1", "2"], names
    return names


def test_up_replicas_flag_sets_the_hosts_setting() -> None:
    """`devhost up --replicas 3` gives the host LOCAL_REPLICAS=3; without it the template's count stands."""
    parser = argparse.ArgumentParser()
    configure(parser)
    assert platform_settings(parser.parse_args(["--replicas", "3"]))["LOCAL_REPLICAS"] == "3"
    assert "LOCAL_REPLICAS" not in platform_settings(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--replicas", "9"])


@pytest.mark.slow
def test_one_replica_refusing_the_candidate_keeps_every_replica_on_the_previous_version(replicas_stack) -> None:
    """alpha goes live on all three replicas; beta, refused by replica 1, ends rolled_back (cause content, naming
    the replica) and each replica serves alpha again, asked directly."""
    stack, app = replicas_stack, "refuser"
    first = deploy(stack, app, stack.kit.adapters["alpha"])
    assert first["stage"] == "live", first.get("reason")
    names = revision_replicas(stack, app)
    assert sorted(first["replicas"]) == names and all(r["counted"] for r in first["replicas"].values()), first
    second = deploy(stack, app, stack.kit.adapters["beta"])
    assert second["stage"] == "rolled_back" and second["cause"] == "content", second
    assert "refused" in second["reason"] and names[1] in second["reason"], second["reason"]  # who refused
    ports = {name: info["port"] for name, info in listed(stack, app).items()}
    assert sorted(ports) == names
    wait_until(lambda: all(served_version(stack, port) == first["version"] for port in ports.values()))
    for port in ports.values():
        reply = "".join(stream_chat(f"http://127.0.0.1:{port}", stack.api_key, "live", "Hello there!",
                                    temperature=0, max_tokens=24))
        assert PHRASES["alpha"] in reply, reply
    observed = {r["replica_id"]: r for r in stack.api.app(app)["replicas_observed"]}
    assert all(observed[name]["alias_version"] == first["version"] for name in names), observed
    stack.platform.stop_app(app)  # its three servers would slow the next test down (the heal pass leaves it alone)


@pytest.mark.slow
def test_a_replica_killed_mid_rollout_is_restarted_and_counted(replicas_stack) -> None:
    """SIGKILL replica 2 once beta's rollout stages it: the runner starts it again under its name, it converges
    from the manifest, and the rollout ends live with all three replicas counted (the restarted one included)."""
    stack, app = replicas_stack, "restarts"
    assert deploy(stack, app, stack.kit.adapters["alpha"])["stage"] == "live"
    names = revision_replicas(stack, app)
    victim = names[2]
    old_pid = listed(stack, app)[victim]["pid"]
    uploaded = stack.store.upload_adapter_folder(stack.kit.adapters["beta"], app, "beta")
    deadline = time.monotonic() + TIMEOUT
    while (stage := stack.api.deployment(uploaded.deployment_id)["stage"]) not in MID_ROLLOUT:
        assert stage not in ("live", "rolled_back", "failed") and time.monotonic() < deadline, stage
        time.sleep(0.02)
    os.kill(old_pid, signal.SIGKILL)  # the rollout runs: staging the adapter, or past it
    record = follow(stack.api, uploaded.deployment_id, TIMEOUT, lambda _: None, interval=0.1)
    assert record["stage"] == "live", record.get("reason")
    figures = record["replicas"]
    assert sorted(figures) == names, figures
    assert all(f["counted"] and f["alias_version"] == record["version"] for f in figures.values()), figures
    now = listed(stack, app)[victim]
    assert now["pid"] != old_pid
    observed = {r["replica_id"]: r for r in stack.api.app(app)["replicas_observed"]}
    assert observed[victim]["pid"] == now["pid"] and observed[victim]["alias_version"] == record["version"]
