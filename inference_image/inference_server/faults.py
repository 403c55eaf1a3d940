"""Test-only fault hooks, off unless their environment variable is set (the local platform passes it through to its
replicas only when the orchestrator's environment has it; nothing sets it in production).

`INFERENCE_FAULT_REFUSE_LOAD="<replica glob>:<adapter glob>"`: the replica whose `CONTAINER_APP_REPLICA_NAME` matches
the first glob refuses to load an adapter whose name matches the second, exactly as the engine refuses one
(`AdapterLoadError` from `Engine.load_adapter`, so the load lands in the replica's `load_errors`). The adapter glob
is matched against the engine's name for the load and against that name without the registry's `-<12 hex>` ref
suffix (the adapter's own name, e.g. `beta`). Example: `"chat--*-1:beta"` makes replica 1 of app chat refuse beta.
"""

from __future__ import annotations

import os
import re
from fnmatch import fnmatchcase

from .engines.base import AdapterLoadError

REFUSE_LOAD_ENV = "INFERENCE_FAULT_REFUSE_LOAD"
_REF_SUFFIX = re.compile(r"-[0-9a-f]{12}$")


def check_load(engine_name: str) -> None:
    """Raise `AdapterLoadError` when `INFERENCE_FAULT_REFUSE_LOAD` makes this replica refuse `engine_name`."""
    rule = os.environ.get(REFUSE_LOAD_ENV, "")
    if not rule:
        return
    replica_glob, sep, adapter_glob = rule.rpartition(":")
    if not sep:
        raise AdapterLoadError(f"{REFUSE_LOAD_ENV} must be '<replica glob>:<adapter glob>', got {rule!r}")
    replica = os.environ.get("CONTAINER_APP_REPLICA_NAME", "")
    names = {engine_name, _REF_SUFFIX.sub("", engine_name)}
    if fnmatchcase(replica, replica_glob) and any(fnmatchcase(name, adapter_glob) for name in names):
        raise AdapterLoadError(f"adapter {engine_name!r}: refused by the test hook {REFUSE_LOAD_ENV}={rule!r} "
                               f"on replica {replica!r}")
