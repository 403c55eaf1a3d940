"""Shared fixtures: the tiny model kit, built once into build/tinykit and reused across test runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinykit import KitPaths, build_kit

KIT_CACHE = Path(__file__).resolve().parent.parent / "build" / "tinykit"


@pytest.fixture(scope="session")
def tiny_kit() -> KitPaths:
    """The tiny Llama kit (base model, tokenizer, adapters alpha and beta); a matching stamp skips the build."""
    return build_kit(KIT_CACHE / "llama", arch="llama")


@pytest.fixture(scope="session")
def local_stack(tiny_kit: KitPaths, tmp_path_factory: pytest.TempPathFactory):
    """The embedded default, once per session: Azurite + devhost running function_app:app on the local platform.

    Tests use their own app names, so their rollouts and inference servers do not meet.
    """
    from devhost.up import local_stack as start

    extra = {"MAX_ADAPTER_MB": "1", "MAX_LORA_RANK": "16", "ROLLOUT_HOT_SWAP_TIMEOUT_S": "20",
             "ROLLOUT_RESTART_TIMEOUT_S": "90", "RECONCILE_RETRY_BASE_S": "1", "RECONCILE_HEAL_INTERVAL_S": "3"}
    with start(tmp_path_factory.mktemp("stack"), tiny_kit.root, extra_env=extra) as stack:
        yield stack
