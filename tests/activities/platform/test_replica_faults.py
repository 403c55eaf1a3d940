"""The test-only fault hook the local platform passes to its replicas (inference_server/faults.py): one replica
refuses one adapter as the engine refuses one; generations with one adapter fail as a broken engine's do, or start
late as a slow engine's do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from inference_image.inference_server.engines.base import (
    AdapterLoadError,
    ChatRequest,
    EngineError,
    EngineNotReady,
)
from inference_image.inference_server.engines.transformers_engine import TransformersEngine
from inference_image.inference_server.faults import (
    FAIL_CHAT_ENV,
    REFUSE_LOAD_ENV,
    SLOW_CHAT_ENV,
    SLOW_CHAT_MS_ENV,
    before_chat,
    check_load,
)


@pytest.mark.parametrize(("replica", "engine_name", "refused"), [
    ("chat--1-1", "beta-0123456789ab", True),  # the registry's engine name: the adapter's name and a ref suffix
    ("chat--1-1", "beta", True),
    ("chat--1-0", "beta-0123456789ab", False),  # another replica
    ("chat--1-1", "alpha-0123456789ab", False),  # another adapter
    ("chat--1-1", "betamax-0123456789ab", False),
])
def test_refuse_load_matches_replica_and_adapter(
    monkeypatch: pytest.MonkeyPatch, replica: str, engine_name: str, refused: bool
) -> None:
    monkeypatch.setenv(REFUSE_LOAD_ENV, "chat--*-1:beta")
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", replica)
    if refused:
        with pytest.raises(AdapterLoadError, match=f"refused by the test hook {REFUSE_LOAD_ENV}"):
            check_load(engine_name)
    else:
        check_load(engine_name)


def test_refuse_load_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REFUSE_LOAD_ENV, raising=False)
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", "chat--1-1")
    check_load("beta-0123456789ab")
    monkeypatch.setenv(REFUSE_LOAD_ENV, "no colon")
    with pytest.raises(AdapterLoadError, match="must be"):
        check_load("beta")


@pytest.mark.parametrize(("replica", "engine_name", "failed"), [
    ("failing--1-0", "beta-0123456789ab", True),
    ("failing--2-2", "beta", True),
    ("chat--1-0", "beta-0123456789ab", False),  # another app's replica
    ("failing--1-0", "alpha-0123456789ab", False),
    ("failing--1-0", None, False),  # the base model
])
def test_fail_chat_matches_replica_and_adapter(
    monkeypatch: pytest.MonkeyPatch, replica: str, engine_name: str | None, failed: bool
) -> None:
    monkeypatch.setenv(FAIL_CHAT_ENV, "failing--*:beta")
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", replica)
    if failed:
        with pytest.raises(EngineError, match=f"failed by the test hook {FAIL_CHAT_ENV}") as caught:
            asyncio.run(before_chat(engine_name))
        assert not isinstance(caught.value, AdapterLoadError)  # an engine failure (500), not a refused load
    else:
        asyncio.run(before_chat(engine_name))


def test_fail_chat_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAIL_CHAT_ENV, raising=False)
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", "failing--1-0")
    asyncio.run(before_chat("beta-0123456789ab"))
    monkeypatch.setenv(FAIL_CHAT_ENV, "no colon")
    with pytest.raises(EngineError, match="must be"):
        asyncio.run(before_chat("beta"))


@pytest.mark.parametrize(("replica", "engine_name", "slowed"), [
    ("slow--1-0", "gamma-0123456789ab", True),
    ("slow--1-0", "beta-0123456789ab", False),
    ("chat--1-0", "gamma-0123456789ab", False),
    ("slow--1-0", None, False),
])
def test_slow_chat_waits_before_the_first_token_on_matching_replicas(
    monkeypatch: pytest.MonkeyPatch, replica: str, engine_name: str | None, slowed: bool
) -> None:
    """`INFERENCE_FAULT_SLOW_CHAT` delays by `INFERENCE_FAULT_SLOW_CHAT_MS`; nothing else is delayed."""
    monkeypatch.setenv(SLOW_CHAT_ENV, "slow--*:gamma")
    monkeypatch.setenv(SLOW_CHAT_MS_ENV, "300")
    monkeypatch.setenv("CONTAINER_APP_REPLICA_NAME", replica)
    started = time.monotonic()
    asyncio.run(before_chat(engine_name))
    waited = time.monotonic() - started
    assert waited >= 0.3 if slowed else waited < 0.3, waited
    monkeypatch.setenv(SLOW_CHAT_MS_ENV, "soon")
    if slowed:
        with pytest.raises(EngineError, match="soon"):
            asyncio.run(before_chat(engine_name))


async def _first(engine: TransformersEngine, adapter: str) -> None:
    await anext(engine.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}], adapter=adapter)))


def test_the_transformers_engine_fails_the_chat_before_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's generate path calls the hook: the first delta raises, even on an engine that never started."""
    monkeypatch.setenv(FAIL_CHAT_ENV, "*:beta")
    engine = TransformersEngine(Path("/no/model"), "tiny")  # never started
    with pytest.raises(EngineError, match="test hook"):
        asyncio.run(_first(engine, "beta-0123456789ab"))
    with pytest.raises(EngineNotReady):  # not failed by the hook: on to admission, which finds no engine
        asyncio.run(_first(engine, "alpha-0123456789ab"))
