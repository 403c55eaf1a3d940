"""Test-only fault hooks, off unless their environment variable is set (the local platform passes them through to its
replicas only when the orchestrator's environment has them; nothing sets them in production).

Each takes `"<replica glob>:<adapter glob>"`: it applies on the replica whose `CONTAINER_APP_REPLICA_NAME` matches the
first glob, to an adapter whose name matches the second. The adapter glob is matched against the engine's name and
against that name without the registry's `-<12 hex>` ref suffix (the adapter's own name, e.g. `beta`).

- `INFERENCE_FAULT_REFUSE_LOAD`: the replica refuses to load the adapter, exactly as the engine refuses one
  (`AdapterLoadError` from `Engine.load_adapter`, so the load lands in the replica's `load_errors`). Example:
  `"chat--*-1:beta"` makes replica 1 of app chat refuse beta.
- `INFERENCE_FAULT_FAIL_CHAT`: every generation with the adapter fails as a broken engine's does (`EngineError` from
  `Engine.chat` before the first delta: the client gets a 500, the replica counts an error for the version). Example:
  `"failing--*:beta"` makes every replica of app failing fail beta's chats.
- `INFERENCE_FAULT_SLOW_CHAT`: every generation with the adapter waits `INFERENCE_FAULT_SLOW_CHAT_MS` (default 2000)
  before its first token, as an overloaded or slower engine does (the replica's time-to-first-token figures show it).
"""

from __future__ import annotations

import asyncio
import os
import re
from fnmatch import fnmatchcase

from .engines.base import AdapterLoadError, EngineError

REFUSE_LOAD_ENV = "INFERENCE_FAULT_REFUSE_LOAD"
FAIL_CHAT_ENV = "INFERENCE_FAULT_FAIL_CHAT"
SLOW_CHAT_ENV = "INFERENCE_FAULT_SLOW_CHAT"
SLOW_CHAT_MS_ENV = "INFERENCE_FAULT_SLOW_CHAT_MS"
#: Every hook's environment variable (the local platform passes these through, and only these).
ENV_NAMES = (REFUSE_LOAD_ENV, FAIL_CHAT_ENV, SLOW_CHAT_ENV, SLOW_CHAT_MS_ENV)
_REF_SUFFIX = re.compile(r"-[0-9a-f]{12}$")


def _applies(env_name: str, engine_name: str | None) -> str | None:
    """The rule of `env_name` when it applies to this replica and `engine_name`, else None; a malformed rule raises
    `ValueError`."""
    rule = os.environ.get(env_name, "")
    if not rule or engine_name is None:
        return None
    replica_glob, sep, adapter_glob = rule.rpartition(":")
    if not sep:
        raise ValueError(f"{env_name} must be '<replica glob>:<adapter glob>', got {rule!r}")
    names = {engine_name, _REF_SUFFIX.sub("", engine_name)}
    replica = os.environ.get("CONTAINER_APP_REPLICA_NAME", "")
    if fnmatchcase(replica, replica_glob) and any(fnmatchcase(name, adapter_glob) for name in names):
        return rule
    return None


def _replica() -> str:
    return os.environ.get("CONTAINER_APP_REPLICA_NAME", "")


def check_load(engine_name: str) -> None:
    """Raise `AdapterLoadError` when `INFERENCE_FAULT_REFUSE_LOAD` makes this replica refuse `engine_name`."""
    try:
        rule = _applies(REFUSE_LOAD_ENV, engine_name)
    except ValueError as exc:
        raise AdapterLoadError(str(exc)) from exc
    if rule is not None:
        raise AdapterLoadError(f"adapter {engine_name!r}: refused by the test hook {REFUSE_LOAD_ENV}={rule!r} "
                               f"on replica {_replica()!r}")


async def before_chat(engine_name: str | None) -> None:
    """Before a generation with `engine_name` (None: the base model, never touched): raise `EngineError` when
    `INFERENCE_FAULT_FAIL_CHAT` fails it on this replica; wait when `INFERENCE_FAULT_SLOW_CHAT` slows it."""
    try:
        failing = _applies(FAIL_CHAT_ENV, engine_name)
        slow = _applies(SLOW_CHAT_ENV, engine_name)
    except ValueError as exc:
        raise EngineError(str(exc)) from exc
    if failing is not None:
        raise EngineError(f"adapter {engine_name!r}: generation failed by the test hook {FAIL_CHAT_ENV}={failing!r} "
                          f"on replica {_replica()!r}")
    if slow is not None:
        raw = os.environ.get(SLOW_CHAT_MS_ENV) or "2000"
        try:
            delay_ms = float(raw)
        except ValueError:
            raise EngineError(f"{SLOW_CHAT_MS_ENV} must be a number of milliseconds, got {raw!r}") from None
        await asyncio.sleep(delay_ms / 1000)
