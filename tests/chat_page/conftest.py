"""Fixtures for the chat page tests: the chat API stand-in on loopback and free ports."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestServer

from tests.chat_page.stand_in import ChatStandIn


@pytest.fixture
async def stand_in() -> AsyncIterator[ChatStandIn]:
    """The stand-in chat API, serving on a free loopback port for one test."""
    fake = ChatStandIn()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Returns a port that nothing listens on (bound, then released)."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
