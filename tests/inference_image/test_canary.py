"""The canary candidate on the server: loaded beside the adapters, asked by version string, the alias split by a
sticky per-caller assignment (the same on every replica), per-version metrics, and what the replica reports."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from inference_server.api_router import STATE
from inference_server.engines.base import ChatRequest, EngineError
from inference_server.manifest import CandidateEntry, Manifest, adapter_digest, write_manifest
from inference_server.metrics import TTFT_MS_BOUNDS
from inference_server.registry import bucket
from inference_server.replica_state import REPLICA_DIR, parse_report
from tests.fakes.adapter_store import make_adapter, publish
from tests.fakes.echo_engine import EchoEngine
from tests.fakes.harness import ADMIN, AUTH, chat_body, server_config, sse_events, start_client

LIVE = "alpha-1-v1"  # publish()'s version of folder alpha-1
#: sha256("3")[:12]: 11 of the 100 callers `caller-i` fall under 0.1 (about a quarter of versions land outside
#: 10 % ± 3 % with only 100 callers: one binomial standard deviation is 3 %).
CANDIDATE = "alpha@4e07408562be"
CHAT = "/v1/chat/completions"


class FlakyEcho(EchoEngine):
    """The echo engine, failing mid-stream (after the first delta) for adapters loaded from `fail_folders`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_folders: set[str] = set()

    async def chat(self, request: ChatRequest):  # type: ignore[override]
        folder = self.adapters[request.adapter].name if request.adapter else "base"
        async for delta in super().chat(request):
            yield delta
            if folder in self.fail_folders:
                raise EngineError("engine died mid-stream")


def with_candidate(store: Path, manifest: Manifest, folder: str, weight: float, version: str = CANDIDATE,
                   adapter: str = "alpha") -> Manifest:
    """Write `manifest` with a candidate from `folder` (its digest computed) at `weight`."""
    candidate = CandidateEntry(adapter, folder, adapter_digest(store / folder), version, weight)
    manifest = replace(manifest, candidate=candidate)
    write_manifest(store, manifest)
    return manifest


def contract_assigned(key: str, weight: float, version: str = CANDIDATE) -> bool:
    """The contract's assignment, written out here independently of the server's code."""
    return int(hashlib.sha256(f"{version}\n{key}".encode()).hexdigest()[:8], 16) / 2**32 < weight


@pytest.fixture
def live_manifest(tmp_path: Path) -> Manifest:
    make_adapter(tmp_path, "alpha-1", "alpha")
    make_adapter(tmp_path, "alpha-2", "alpha two")
    return publish(tmp_path, {"alpha": "alpha-1"}, active="alpha")


async def start(aiohttp_client, store: Path, engine: EchoEngine | None = None, **config: Any) -> TestClient:
    return await start_client(aiohttp_client, server_config(adapter_store=store, **config), engine or EchoEngine())


async def sync(client: TestClient) -> dict[str, Any]:
    resp = await client.post("/admin/sync", headers=ADMIN)
    assert resp.status == 200
    return await resp.json()


async def ask(client: TestClient, model: str = "live", headers: dict[str, str] | None = None,
              **body: Any) -> tuple[str, str | None]:
    """(folder that answered, X-Adapter-Version) of one non-streaming request."""
    resp = await client.post(CHAT, json=chat_body(model, **body), headers={**AUTH, **(headers or {})})
    assert resp.status == 200, await resp.text()
    text = (await resp.json())["choices"][0]["message"]["content"]
    return text.split("]")[0][1:], resp.headers.get("X-Adapter-Version")


async def ask_stream(client: TestClient, model: str = "live", **body: Any) -> tuple[str, str | None]:
    resp = await client.post(CHAT, json=chat_body(model, stream=True, **body), headers=AUTH)
    assert resp.status == 200
    chunks = [json.loads(e) for e in sse_events(await resp.text())[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return text.split("]")[0][1:], resp.headers.get("X-Adapter-Version")


async def test_candidate_loaded_and_asked_by_version(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """At weight 0 the candidate is loaded beside the live version of the same adapter (its own engine name), answers
    its version string, and takes no alias traffic; the other names keep working; /v1/models lists it."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.0)
    engine = EchoEngine()
    client = await start(aiohttp_client, tmp_path, engine)
    registry = client.app[STATE].registry
    assert registry.candidate is not None and registry.candidate.version == CANDIDATE
    assert registry.candidate.engine_name != registry.get("alpha").engine_name
    assert sorted(p.name for p in engine.adapters.values()) == ["alpha-1", "alpha-2"]
    assert await ask(client, CANDIDATE) == ("alpha-2", CANDIDATE)
    assert await ask_stream(client, CANDIDATE) == ("alpha-2", CANDIDATE)
    assert await ask(client, LIVE) == ("alpha-1", LIVE)
    assert await ask(client, "alpha") == ("alpha-1", LIVE)
    assert await ask(client, "tiny") == ("base", None)
    for i in range(100):
        assert await ask(client, user=f"caller-{i}") == ("alpha-1", LIVE)
    for _ in range(50):
        assert await ask(client) == ("alpha-1", LIVE)
    models = {m["id"]: m for m in (await (await client.get("/v1/models", headers=AUTH)).json())["data"]}
    assert models[CANDIDATE]["version"] == CANDIDATE and models[CANDIDATE]["root"] == "alpha"
    assert models["live"]["version"] == LIVE
    resp = await client.post(CHAT, json=chat_body("alpha@000000000000"), headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"


async def test_three_replicas_assign_each_caller_the_same_version(aiohttp_client, tmp_path: Path,
                                                                  live_manifest: Manifest) -> None:
    """Weight 0.1: 1,000 alias requests from 100 callers spread over three servers like an ingress: every caller
    always gets one version, on every server, the one the contract's hash says, and 10 % ± 3 % of callers get the
    candidate; streaming answers are assigned the same way."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.1)
    servers = [await start(aiohttp_client, tmp_path, report_replica_state=False) for _ in range(3)]
    seen: dict[str, set[str | None]] = {f"caller-{i}": set() for i in range(100)}
    for n in range(1000):
        caller = f"caller-{n % 100}"
        server = servers[n % 3]
        folder, version = await (ask_stream(server, user=caller) if n % 7 == 0 else ask(server, user=caller))
        assert (folder, version) in {("alpha-1", LIVE), ("alpha-2", CANDIDATE)}
        seen[caller].add(version)
    assert all(len(versions) == 1 for versions in seen.values()), "a caller got two versions"
    on_candidate = {caller for caller, versions in seen.items() if versions == {CANDIDATE}}
    assert on_candidate == {caller for caller in seen if contract_assigned(caller, 0.1)}
    assert 7 <= len(on_candidate) <= 13
    for server in servers:  # each server served both versions, and counted them
        counted = server.app[STATE].versions.snapshot()
        assert set(counted) == {LIVE, CANDIDATE} and sum(m["requests"] for m in counted.values()) in (333, 334)


async def test_session_header_is_the_key_when_there_is_no_user(aiohttp_client, tmp_path: Path,
                                                               live_manifest: Manifest) -> None:
    """`X-Session-Id` keeps a session on one version; `user` wins over it."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.5)
    client = await start(aiohttp_client, tmp_path)
    for i in range(40):
        session = f"session-{i}"
        want = CANDIDATE if contract_assigned(session, 0.5) else LIVE
        for _ in range(3):
            assert (await ask(client, headers={"X-Session-Id": session}))[1] == want
    on = next(f"u{i}" for i in range(100) if contract_assigned(f"u{i}", 0.5))
    off = next(f"s{i}" for i in range(100) if not contract_assigned(f"s{i}", 0.5))
    assert (await ask(client, headers={"X-Session-Id": off}, user=on))[1] == CANDIDATE
    assert (await ask(client, headers={"X-Session-Id": on}, user=off))[1] == LIVE


async def test_without_a_key_about_weight_of_requests(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """No `user`, no session: each request is drawn on its own, about `weight` of them go to the candidate."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.3)
    client = await start(aiohttp_client, tmp_path)
    versions = Counter([(await ask(client))[1] for _ in range(400)])
    assert set(versions) == {LIVE, CANDIDATE}
    assert 0.2 <= versions[CANDIDATE] / 400 <= 0.4  # sd 2.3 %: over four of them either side


async def test_weight_one_and_zero(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """Weight 1 sends every alias caller to the candidate; back to weight 0 none, keyed or not."""
    manifest = with_candidate(tmp_path, live_manifest, "alpha-2", 1.0)
    client = await start(aiohttp_client, tmp_path)
    assert {(await ask(client, user=f"c{i}"))[1] for i in range(30)} == {CANDIDATE}
    with_candidate(tmp_path, manifest, "alpha-2", 0.0)
    await sync(client)
    assert {(await ask(client, user=f"c{i}"))[1] for i in range(30)} | {(await ask(client))[1] for _ in range(30)} \
        == {LIVE}


def test_bucket_is_the_contract_hash_and_uniform() -> None:
    keys = [f"k{i}" for i in range(10000)]
    assert all((bucket(CANDIDATE, k) < 0.25) == contract_assigned(k, 0.25) for k in keys[:200])
    share = sum(bucket(CANDIDATE, k) < 0.1 for k in keys) / len(keys)
    assert 0.09 <= share <= 0.11
    # salted by the version: another candidate picks other callers
    assert {k for k in keys[:500] if bucket("beta@1", k) < 0.1} != {k for k in keys[:500] if bucket(CANDIDATE, k) < 0.1}


async def test_candidate_dropped_and_promoted(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """A manifest without the candidate unloads it (its version answers 404); a manifest that promotes it (the
    adapter entry now has its folder, digest and version) reuses the loaded candidate, with no second load."""
    manifest = with_candidate(tmp_path, live_manifest, "alpha-2", 0.1)
    engine = EchoEngine()
    client = await start(aiohttp_client, tmp_path, engine)
    write_manifest(tmp_path, live_manifest)
    report = await sync(client)
    assert report["retired"] == [CANDIDATE]
    await client.app[STATE].registry.wait_freed()
    assert (await client.post(CHAT, json=chat_body(CANDIDATE), headers=AUTH)).status == 404
    assert sorted(p.name for p in engine.adapters.values()) == ["alpha-1"]
    write_manifest(tmp_path, manifest)
    assert (await sync(client))["loaded"] == [CANDIDATE]
    loads = len([e for e in engine.events if e[0] == "load"])
    promoted = publish(tmp_path, {"alpha": "alpha-2"}, active="alpha", versions={"alpha": CANDIDATE})
    assert promoted.candidate is None
    await sync(client)
    await client.app[STATE].registry.wait_freed()
    assert len([e for e in engine.events if e[0] == "load"]) == loads, "promotion loaded the adapter again"
    assert sorted(p.name for p in engine.adapters.values()) == ["alpha-2"]
    assert await ask(client) == ("alpha-2", CANDIDATE) and await ask(client, CANDIDATE) == ("alpha-2", CANDIDATE)
    assert client.app[STATE].registry.candidate is None and client.app[STATE].syncer.converged


async def test_metrics_per_version(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """Requests, errors (a 5xx, a stream that failed mid-way; not a client's 400) and time to first token are
    counted by the version that served them, the base model's under its name."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.0)
    engine = FlakyEcho(tokens=3, delay_s=0.05)
    client = await start(aiohttp_client, tmp_path, engine)
    versions = client.app[STATE].versions
    await ask(client)
    await ask(client, CANDIDATE)
    await ask_stream(client, CANDIDATE)
    await ask(client, "tiny")
    engine.fail_folders.add("alpha-2")
    resp = await client.post(CHAT, json=chat_body(CANDIDATE, stream=True), headers=AUTH)
    assert resp.status == 200 and "engine died" not in await resp.text()  # the client sees the generic error event
    engine.busy = True
    assert (await client.post(CHAT, json=chat_body("live"), headers=AUTH)).status == 503
    engine.busy = False
    resp = await client.post(CHAT, json=chat_body("live", temperature=5), headers=AUTH)
    assert resp.status == 400  # refused before routing: not counted at all
    snap = versions.snapshot()
    assert {v: (m["requests"], m["errors"]) for v, m in snap.items()} == {LIVE: (2, 1), CANDIDATE: (3, 1),
                                                                          "tiny": (1, 0)}
    # non-streaming: the whole answer (3 tokens 50 ms apart) is over 100 ms; each answered request has one sample
    assert sum(snap[LIVE]["ttft_ms"]["counts"]) == 1 and sum(snap[CANDIDATE]["ttft_ms"]["counts"]) == 3
    whole = snap[LIVE]["ttft_ms"]["counts"]
    assert sum(whole[bisect.bisect_left(TTFT_MS_BOUNDS, 100):]) == 1
    assert snap[LIVE]["ttft_ms"]["le"] == list(TTFT_MS_BOUNDS) and len(whole) == len(TTFT_MS_BOUNDS) + 1


async def test_report_and_ready_carry_candidate_and_metrics(aiohttp_client, tmp_path: Path,
                                                            live_manifest: Manifest) -> None:
    """A refused candidate: in load_errors under its adapter name with its version, `candidate.loaded` false,
    `converged` false, while /ready stays 200 for the live alias. A good one: loaded, converged; metrics in the file."""
    make_adapter(tmp_path, "alpha-bad", "alpha bad", bad=True)
    manifest = with_candidate(tmp_path, live_manifest, "alpha-bad", 0.1, version="alpha@badbadbadbad")
    client = await start(aiohttp_client, tmp_path)
    report = parse_report(next((tmp_path / REPLICA_DIR).glob("*.json")).read_bytes())
    assert report["load_errors"]["alpha"]["version"] == "alpha@badbadbadbad"
    assert "tensor shapes" in report["load_errors"]["alpha"]["reason"]
    assert report["candidate"] == {"adapter": "alpha", "version": "alpha@badbadbadbad", "weight": 0.1, "loaded": False}
    assert report["converged"] is False and report["alias_version"] == LIVE
    resp = await client.get("/ready", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["served_version"] == LIVE and body["candidate"]["loaded"] is False
    for _ in range(20):  # a refused candidate takes no alias traffic
        assert (await ask(client))[1] == LIVE
    with_candidate(tmp_path, manifest, "alpha-2", 0.25)
    await sync(client)
    await ask(client, CANDIDATE)
    await sync(client)
    report = parse_report(next((tmp_path / REPLICA_DIR).glob("*.json")).read_bytes())
    assert report["load_errors"] == {} and report["converged"] is True
    assert report["candidate"] == {"adapter": "alpha", "version": CANDIDATE, "weight": 0.25, "loaded": True}
    assert report["metrics"][CANDIDATE]["requests"] == 1 and report["metrics"][LIVE]["requests"] == 20
    assert (await (await client.get("/ready", headers=AUTH)).json())["candidate"]["loaded"] is True


async def test_converged_needs_the_candidates_weight(aiohttp_client, tmp_path: Path, live_manifest: Manifest) -> None:
    """`converged` compares the candidate's weight too; the alias's readiness does not depend on the candidate."""
    with_candidate(tmp_path, live_manifest, "alpha-2", 0.1)
    client = await start(aiohttp_client, tmp_path)
    state = client.app[STATE]
    assert state.syncer.converged
    state.registry.candidate_weight = 0.5
    assert not state.syncer.converged and state.syncer.alias_converged
    assert (await client.get("/ready", headers=AUTH)).status == 200
    await sync(client)
    assert state.syncer.converged and state.registry.candidate_weight == 0.1
