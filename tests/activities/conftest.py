"""Fixtures for activity tests: one Azurite blob emulator per test session, and a fresh container per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devhost.azurite import Azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite blob service in memory on a free loopback port, stopped at the end of the session."""
    with Azurite(blob_port=0) as emulator:
        yield emulator


@pytest.fixture
def container_name() -> str:
    """A container name unique to the test, so tests sharing the emulator do not see each other's blobs."""
    return f"adapters-{uuid.uuid4().hex[:12]}"
