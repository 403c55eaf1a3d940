"""The e2e tests' shared 3-replica stack: started once for every module that asks for it (CI has two cores)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: replica 1 of app `refuser` refuses beta (tests/e2e/test_local_replicas_e2e.py)
REFUSING = "refuser--*-1:beta"
#: every replica of app `steps` fails beta's generations (tests/e2e/test_canary_e2e.py)
FAILING = "steps--*:beta"
#: every replica of app `steps` answers adapter `slow` 3 s late (tests/e2e/test_canary_e2e.py)
SLOW = "steps--*:slow"


@pytest.fixture(scope="session")
def replicas_stack(tiny_kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Its own stack (the replica count and the fault hooks are the host's settings), as tests/conftest.py's."""
    from devhost.up import local_stack as start

    # three servers start at once on a small machine (2 cores: about 20 s until each has loaded the base model and
    # the first adapter): a hot swap gate of 60 s, so the first rollout does not time out into a restart
    extra = {"MAX_ADAPTER_MB": "1", "MAX_LORA_RANK": "16", "ROLLOUT_HOT_SWAP_TIMEOUT_S": "60",
             "ROLLOUT_RESTART_TIMEOUT_S": "90", "RECONCILE_RETRY_BASE_S": "1", "RECONCILE_HEAL_INTERVAL_S": "3",
             "LOCAL_REPLICAS": "3", "INFERENCE_FAULT_REFUSE_LOAD": REFUSING, "INFERENCE_FAULT_FAIL_CHAT": FAILING,
             "INFERENCE_FAULT_SLOW_CHAT": SLOW, "INFERENCE_FAULT_SLOW_CHAT_MS": "3000"}
    with start(tmp_path_factory.mktemp("replicas-stack"), tiny_kit.root, extra_env=extra) as stack:
        yield stack
