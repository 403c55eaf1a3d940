"""The test-only fault hook the local platform passes to its replicas (inference_server/faults.py): one replica
refuses one adapter as the engine refuses one."""

from __future__ import annotations

import pytest

from inference_image.inference_server.engines.base import AdapterLoadError
from inference_image.inference_server.faults import REFUSE_LOAD_ENV, check_load


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
