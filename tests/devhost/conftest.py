"""Fixtures: a DevHost running the sample app on a free loopback port, state in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devhost.host import DevHost
from tests.devhost.apps.durable_samples import app as sample_app


@pytest.fixture
async def devhost(tmp_path) -> AsyncIterator[DevHost]:
    """Start the sample app on devhost; stop and reset it afterwards."""
    host = DevHost(sample_app, state_dir=tmp_path / "state", port=0)
    await host.start()
    try:
        yield host
    finally:
        host.reset()
        await host.stop()
